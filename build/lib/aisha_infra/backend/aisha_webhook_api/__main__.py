"""`python -m aisha_webhook_api [serve | events ...]` (cwd: /opt/aisha-backend/app)."""

import sys

from aisha_webhook_api.cli import main

sys.exit(main())
