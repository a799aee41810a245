"""Smoke test of the Hugging Face environment, offline (no model or data set is
downloaded): a word-level tokenizer trained with Tokenizers on a few sentences, a
Datasets dataset of them, a tiny BERT made from a config, with a LoRA adapter from
PEFT, trained for a few steps through Accelerate, on the GPU when one is visible.
Prints one JSON line; `ok` says whether the loss fell. Run as `python smoke.py`, or
inside a notebook by `make verify-envs`."""

import json

import datasets
import peft
import tokenizers
import torch
import transformers
from accelerate import Accelerator

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "the model learns from data",
    "we train a tiny network",
] * 8


def main() -> dict:
    torch.manual_seed(0)
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(
        SENTENCES, tokenizers.trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]"])
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="[PAD]", unk_token="[UNK]"
    )
    data = datasets.Dataset.from_dict(
        {"text": SENTENCES, "label": [i % 2 for i in range(len(SENTENCES))]}
    ).map(lambda row: fast(row["text"], padding="max_length", max_length=8), batched=True)
    data.set_format("torch", columns=["input_ids", "attention_mask", "label"])

    config = transformers.BertConfig(
        vocab_size=fast.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=2,
    )
    model = transformers.BertForSequenceClassification(config)
    model = peft.get_peft_model(
        model,
        peft.LoraConfig(r=4, target_modules=["query", "value"], modules_to_save=["classifier"]),
    )
    accelerator = Accelerator()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-2)
    loader = torch.utils.data.DataLoader(data, batch_size=len(SENTENCES))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    batch = next(iter(loader))
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            labels=batch["label"],
        )
        accelerator.backward(out.loss)
        optimizer.step()
        losses.append(out.loss.item())
    device = str(accelerator.device)
    return {
        "framework": "transformers",
        "version": transformers.__version__,
        "torch": torch.__version__,
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "steps": len(losses),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "ok": losses[-1] < losses[0] / 2,
    }


if __name__ == "__main__":
    print(json.dumps(main()))
