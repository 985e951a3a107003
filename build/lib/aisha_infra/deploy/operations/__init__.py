"""pyinfra operations this project needs and pyinfra does not ship."""
