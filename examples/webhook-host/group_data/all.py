# Settings for every host; each setting, its default and what it does: aisha-infra's README.
aisha_domain = "webhooks.example.com"  # the name fal calls (self-signed until you set the two below)
# tls_mode = "letsencrypt"
# letsencrypt_email = "ops@example.com"
