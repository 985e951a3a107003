"""`aisha-infra diagnose` (command.py): why HTTPS to a host fails, and how to fix it.

diagnosis.py      Target, Report, and diagnose(): every check for one target, in order
dns_and_ports.py  DNS records and the TCP ports, from this machine
tls.py            the TLS chain as the host serves it (analysis: aisha_infra/checks/tlscheck.py)
host.py           the host side over SSH: firewall (ufw.py), nginx and its certificate
                  files (nginx_config.py), services, journal; remote.py runs the commands
targets.py        what to diagnose: a URL, or every host of a pyinfra inventory
output.py         the findings as a table or JSON
command.py        the sub-command: register(), run()
"""
