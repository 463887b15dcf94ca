"""Checkpoint conversion, all at the tensor level (no model is built), streamed from disk.

- ``merge``: a peft LoRA adapter folded into its base, one tensor at a time (the pipeline's
  convert stage and ``vlmtune checkpoint merge``); ``lora``: an adapter as plain tensors;
  ``names``: loaded-model names ↔ stored tensor names.
- ``official`` (+ ``official_weights``, ``official_config``, ``internlm2``, ``tokenizer``):
  official InternVL2/2.5 (``InternVLChatModel``) ↔ transformers-native InternVL.
- ``xtuner``: xtuner ``iter_N.pth`` checkpoints applied to their official base.
- ``cache``: an official ``model.path`` converted once into ``cache_dir/converted/``;
  ``export``: the tuned model written back in the official layout.
- ``shards`` / ``stream``: safetensors I/O; ``safety``: ``OUT.tmp`` + rename, ``--force``;
  ``inspect``: what a directory is.
"""
