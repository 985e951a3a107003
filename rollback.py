"""Go back to each host's previous app release, in one step:
`pyinfra inventory.py rollback.py [--limit GROUP]` (what `aisha-infra rollback` runs).

Validates the settings like deploy.py, then switches <base>/current to the previous
release and restarts the app on it (socket activation holds connections meanwhile).
"""

from aisha_infra.tasks import roll_back_app

roll_back_app()
