"""``python -m dicomvault``: the same as the ``dicomvault`` command."""

from dicomvault.cli.app import main

main()
