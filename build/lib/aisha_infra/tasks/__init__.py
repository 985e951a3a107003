"""One pyinfra @deploy per concern; deploy.py decides their order."""
