"""The fieldsync engine: wire codec, cursors, change log, datasets, pull and push.

It knows nothing of HTTP, Redis, Huey or the ERP domain; those register with it.
"""
