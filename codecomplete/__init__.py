"""codecomplete: a local coding assistant for the terminal (inline suggestions, chat, --bench) and for editors
(`codecomplete serve`, a warm server)."""
