"""deskmail sends a service desk's e-mail.

One import namespace over the project's three folders: `deskmail.schemas` (the contract publishers
read), `deskmail.producers` (publishing, the admin command, the console) and `deskmail.workers` (the
Dramatiq actors that admit and send). An installed wheel holds them under this package; in a checkout
the three names here are links to the top-level folders, so both run the same files.
"""
