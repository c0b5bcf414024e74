"""Administrative services behind the CLI and (later) the admin console: no protocol I/O."""
