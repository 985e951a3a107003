# Settings for every host. Each key, its default and what it does:
# aisha_infra/deploy/settings.py (and README.md). Override per group in
# group_data/<group>.py or per host in the hosts file.

# The public DNS name fal will call. The lab's default; set yours for real servers.
aisha_domain = "aibots.test"

# Real servers: a certificate every client trusts.
# tls_mode = "letsencrypt"
# letsencrypt_email = "ops@example.com"
