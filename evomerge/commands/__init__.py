"""The bodies of the command-line commands (``cli.py`` only parses and calls them).

One module per command: ``search`` (search and resume), ``status``, ``export``, ``report`` and
``evaluate`` (``evomerge eval``). Each function returns a process exit code; a
``UserInputError`` propagates to cli.py, which prints it as one line and exits 2.
"""
