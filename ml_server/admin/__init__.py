"""The admin API (``/admin/``: keys, usage, audit) and its command line (``make keys``)."""
