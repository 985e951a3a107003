"""The deploy library: settings and their validation, rendering, custom operations and facts."""
