"""codecomplete: a local coding assistant for the terminal (inline suggestions, chat, --bench)."""
