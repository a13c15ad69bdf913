"""The MongoDB source: a change stream, its resume-token store and the event → message mapping."""
