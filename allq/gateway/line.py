"""The local line protocol (api.md §4): one JSON object per line over TCP and a unix socket."""
