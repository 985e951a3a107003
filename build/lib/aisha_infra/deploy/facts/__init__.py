"""pyinfra facts this project needs and pyinfra does not ship."""
