"""`synthserve sidecar`: a Transformers server for local models that speaks TGI's protocol.

    engine.py     the loaded model, its tokenizer and the one model thread (torch, no HTTP);
                  get_engine() shares one engine per model with the in-process `local` provider
    batcher.py    continuous batching: requests -> decode steps, with a key/value cache
    kvcache.py    that key/value cache: buffers appended in place
    sampling.py   the next token of each sequence, with its own parameters
    embedding.py  last-token hidden states, batched across calls
    loading.py    finding, converting (GGUF) and caching the model
    cpu.py        CPU kernels: oneDNN linears, fused RMSNorm, attention without copies
    blockq.py     exact block-quantized (GGUF) weights for decode steps; blockq.c, built on first use
    decode.py     a whole decode step of such a model in one C call (decode.c, built with blockq.c)
    params.py     request/result types and errors (no torch)
    protocol.py   TGI's wire types (no torch)
    openai_wire.py  OpenAI's wire types: chat, completions, embeddings (no torch)
    app.py        TGI's HTTP routes (no torch); serve() is what the CLI runs
    options.py    the command-line options (no FastAPI: every `synthserve` start builds them)
    openai_routes.py  OpenAI's routes (no torch)
    serving.py    what both share: the engine dependency, token streams, errors (no torch)
"""
