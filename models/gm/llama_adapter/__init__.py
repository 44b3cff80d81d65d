"""LLaMA-Adapter V2 multimodal, the paper's GM (the DriveLM challenge baseline), from its released files, in
plain PyTorch: the second GM backend beside Hugging Face ("llama-adapter").

- `files`: the folder layout (params.json, consolidated.*.pth, tokenizer.model, the adapter .pth, the CLIP
  .pt), reading and checking the files against each other;
- `config`: the model's sizes, read from params.json and the tensors' shapes;
- `llama`, `clip`, `model`: LLaMA-2 with bias tuning and gated adapter attention, CLIP's ViT tower, the
  visual branch joining them;
- `processor`: the sentencepiece tokenizer and the authors' image preprocessing (BGR by default);
- `loading`: inspect (no weights read) and load, as `netroller.models.gm.loader` dispatches to them;
- `capture`: `AdapterCapturer`, the latents with the semantics of `netroller.models.gm.capture`;
- `tiny`: a tiny random-weight model in exactly those formats.
"""
