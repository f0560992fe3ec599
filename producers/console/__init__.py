"""The admin console: the product's screens in a browser, reading the store and changing things only
through the same control actions as the `deskmail` command."""
