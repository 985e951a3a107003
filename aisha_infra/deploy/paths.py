"""Every path on the host, in one place: where each file of ours lands, and what we read.

Paths below a setting (aisha_base_dir, aisha_data_dir) are names joined to it by the
Settings properties in settings.py. Where does a file on the server come from? Find its
name here, then the constant in tasks/ (or rendering.py for a template's variables).
"""

# Below aisha_base_dir, per host: settings.py builds each one from these names.
APP_LINK_NAME = "app"  # the running release's code: a link to current/app
RELEASES_DIR_NAME = "releases"
CURRENT_RELEASE_LINK_NAME = "current"
VENV_DIR_NAME = "venv"
SSL_DIR_NAME = "ssl"
# Below aisha_data_dir: the bundled app's event store.
EVENTS_DATABASE_NAME = "events.sqlite3"

# The app: systemd units and log rotation
SERVICE_UNIT_PATH = "/etc/systemd/system/aisha-api.service"
SOCKET_UNIT_PATH = "/etc/systemd/system/aisha-api.socket"
LOGROTATE_PATH = "/etc/logrotate.d/aisha"
REMOTE_JWKS_NAME = "fal-jwks.json"
# A release (<base>/releases/<id>) holds app/, the unit, the app's environment and the JWKS.
RELEASE_UNIT_NAME = "aisha-api.service"
RELEASE_ENV_NAME = "aisha-api.env"

# nginx
SITE_NAME = "aisha-webhook"
NGINX_CONF = "/etc/nginx/nginx.conf"
DEFAULT_SITE_LINK = "/etc/nginx/sites-enabled/default"
NGINX_SITE_PATH = f"/etc/nginx/sites-available/{SITE_NAME}.conf"
NGINX_SITE_LINK = f"/etc/nginx/sites-enabled/{SITE_NAME}.conf"
NGINX_CERT_SNIPPET_PATH = f"/etc/nginx/snippets/{SITE_NAME}-certificate.conf"

# Event store backups
BACKUP_SERVICE_PATH = "/etc/systemd/system/aisha-backup.service"
BACKUP_TIMER_PATH = "/etc/systemd/system/aisha-backup.timer"
BACKUP_STAGING_DIRECTORY = "aisha-backup"  # below /run, the backup service's RuntimeDirectory

# A renewal hook whose reload nginx refused leaves this flag; the retry timer clears it.
# In /run: after a reboot nginx starts with the current certificate anyway.
RELOAD_PENDING_FLAG = "/run/aisha-nginx-reload-pending"
RELOAD_RETRY_SERVICE_PATH = "/etc/systemd/system/aisha-nginx-reload-retry.service"
RELOAD_RETRY_TIMER_PATH = "/etc/systemd/system/aisha-nginx-reload-retry.timer"
ACME_WEBROOT = "/var/www/aisha-acme"
NGINX_ERROR_LOG = "/var/log/nginx/error.log"

# The on-host watch (tasks/watch.py): program, configuration, results.
WATCH_SCRIPT_PATH = "/usr/local/lib/aisha-watch/aisha_watch.py"
WATCH_CONFIG_DIR = "/etc/aisha-watch"
WATCH_CONFIG_PATH = f"{WATCH_CONFIG_DIR}/config.json"
WATCH_ALERT_URL_PATH = f"{WATCH_CONFIG_DIR}/alert-webhook-url"
WATCH_STATE_DIR = "/var/lib/aisha-watch"  # last.json, notified.json, aisha.prom
WATCH_LAST_RESULT_PATH = f"{WATCH_STATE_DIR}/last.json"
WATCH_LIVE_COPY_DIR = "/run/aisha-watch-live"
WATCH_SERVICE_PATH = "/etc/systemd/system/aisha-watch.service"
WATCH_TIMER_PATH = "/etc/systemd/system/aisha-watch.timer"
CERTBOT_ONFAILURE_DROPIN_PATH = "/etc/systemd/system/certbot.service.d/aisha-watch.conf"
NODE_EXPORTER_DEFAULTS_PATH = "/etc/default/prometheus-node-exporter"

# Let's Encrypt
LETSENCRYPT_LIVE_DIR = "/etc/letsencrypt/live"  # <dir>/<first name>/fullchain.pem, privkey.pem
REMOTE_ACME_CA = "/etc/letsencrypt/aisha-acme-ca.pem"  # letsencrypt_ca_bundle, uploaded
RESTORE_PAYLOAD = "/root/.aisha-letsencrypt-restore.tar.gz"  # letsencrypt_restore_archive, uploaded
CERTBOT_DROPIN_PATH = "/etc/systemd/system/certbot.service.d/aisha-acme-ca.conf"
RENEWAL_HOOK_PATH = "/etc/letsencrypt/renewal-hooks/deploy/aisha-reload-nginx.sh"

# Packages install in the background (tasks/packages.py): a transient unit, its script,
# output and exit status in a directory only root can read; both gone once waited for.
# Each install has a unit of its own, aisha-packages-<start time>.service: one that systemd
# could not collect (its cgroup still there) never blocks the next.
PACKAGES_UNIT = "aisha-packages"
PACKAGES_UNITS = f"{PACKAGES_UNIT}-*.service"
PACKAGES_RUN_DIR = "/run/aisha-packages"
