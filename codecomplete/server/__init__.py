"""`codecomplete serve`: the warm session behind the HTTP APIs editors speak.

One module per protocol over one engine, as llama.cpp's server and vLLM's OpenAI front end are laid out:

    llama_cpp.py   /infill, /completion, /tokenize, /detokenize, /health, /props (llama.vim, llama.vscode,
                   Continue's llama.cpp provider)
    openai_api.py  /v1/completions, /v1/chat/completions, /v1/models (the openai client, Continue), and
                   llama.cpp's /apply-template (the chat prompt, which the chat route builds)
    ollama.py      /api/generate, /api/chat, /api/tags, /api/show, /api/ps, /api/version, / (Ollama-targeting plugins)
    tabby.py       /v1/completions with Tabby's `segments`, /v1/health, /v1/events (tabby-agent: Tabby's VS Code,
                   JetBrains, Vim and Neovim plugins)
    native.py      /codecomplete/v1/... (codecomplete's own command line, through client.py)

Requests are validated at the edge (bodies.py) and run one at a time on the engine thread (worker.py), which
keeps the KV cache, and with it the prompt prefix, between them. Importing this package is cheap: only `serve`
(app.py and below) imports FastAPI and uvicorn, and discovery.py, which the command line reads, neither.
"""
