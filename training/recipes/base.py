"""Stage 1, base: the general model that stands where Baichuan-7B stands in the paper.

tiny/demo: train a byte-level BPE tokenizer on the training corpora (with the chat template's special
tokens), then pretrain a LLaMA-architecture model from ``cfg.model`` on the general text only, so that it
knows Chinese but not medicine. paper: the base is the local Hugging Face directory ``cfg.model.path``,
linked into the run or converted into it (``training/base_model.py``).
"""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, set_seed

from core.config import Config
from core.errors import UserError
from core.files import read_jsonl
from training.modeling import BOS, CHAT_TEMPLATE, EOS, PAD, SPECIAL_TOKENS, UNK, load_tokenizer
from training.recipes import recipe
from training.trainer.arguments import process_state
from training.trainer.lifecycle import finish_stage, train_resumably
from training.trainer.packing import next_token_trainer
from training.trainer.paths import StagePaths

# The builder marks general (non-medical) text with a "general" source prefix: the People's Daily and
# product-review records of base.jsonl (ChiMed-CPT's general share is the front of it) and the general
# instructions of ChiMed-SFT (news continuations, review replies). Everything else is medical.
GENERAL_SOURCE_PREFIX = "general"


def is_general_text(record: dict) -> bool:
    return str(record.get("source", "")).startswith(GENERAL_SOURCE_PREFIX)


def general_corpus(base: list[dict], sft: list[dict]) -> list[str]:
    """The base's pretraining documents: the general text of base.jsonl, and ChiMed-SFT's general
    conversations as plain text."""
    return [r["text"] for r in base if is_general_text(r)] + [
        "\n".join(m["content"] for m in r["messages"]) for r in sft if is_general_text(r)
    ]


@recipe("base")
def run_base_stage(cfg: Config, paths: StagePaths, fingerprint: str) -> None:
    """Train the tokenizer and pretrain the general base model into ``runs/<id>/base``."""
    # inputs: the general text for the model; ChiMed's training corpora for the tokenizer
    base, cpt, sft = (read_jsonl(cfg.data_dir / f"{split}.jsonl") for split in ("base", "cpt", "sft"))
    general = general_corpus(base, sft)
    if not general:
        raise UserError(
            f"{cfg.data_dir / 'base.jsonl'} has no general text (records whose source starts with "
            "'general') to pretrain the base on: rebuild it with ./launch.sh build-data"
        )
    tokenizer_corpus = [r["text"] for r in cpt] + [m["content"] for r in sft for m in r["messages"]]

    # tokenizer: trained once by the main process; the others (and a resumed run) load the saved one
    tokenizer_dir = paths.work / "tokenizer"
    with process_state().main_process_first():
        if not (tokenizer_dir / "tokenizer.json").is_file():
            train_bpe_tokenizer(tokenizer_corpus, cfg.model.vocab_size).save_pretrained(tokenizer_dir)
        tokenizer = load_tokenizer(tokenizer_dir)

    # model: LLaMA architecture from the config, random init (seeded)
    set_seed(cfg.train.seed)
    model = LlamaForCausalLM(llama_config(cfg, tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id

    # trainer: next-token prediction on packed blocks of general text
    trainer = next_token_trainer(cfg, cfg.model, paths, model, tokenizer, general)
    metrics = train_resumably(trainer, paths)
    metrics.update(general_docs=len(general), parameters=model.num_parameters(), vocab_size=len(tokenizer))

    # save: full weights + tokenizer with the chat template, then rename into place
    finish_stage(
        paths,
        trainer.save_model,
        kind="full",
        parent=None,
        fingerprint=fingerprint,
        metrics=metrics,
        is_main=trainer.is_world_process_zero(),
    )


def train_bpe_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (no unknown characters, exact decoding) with the chat template's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token=PAD, unk_token=UNK, bos_token=BOS, eos_token=EOS
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def llama_config(cfg: Config, tokenizer) -> LlamaConfig:
    m = cfg.model
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads,
        num_key_value_heads=m.num_key_value_heads,
        max_position_embeddings=m.max_position_embeddings,
        tie_word_embeddings=True,  # small models: the embedding matrix is most of the parameters
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
