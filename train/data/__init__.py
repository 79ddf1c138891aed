"""Training data: corpus -> tokens (cached once per content hash) -> grain batches.

    check(config)                                  # the corpus exists and is readable (nothing read)
    dataset = prepare(config)                      # find, tokenize or reuse the cache, open memmaps
    batches = dataset.train_iterator(seed)         # {"inputs","targets"}: int32 [B, T]; get_state/set_state
    evals = dataset.eval_batches()                 # fixed list, the same at every eval
    epochs = dataset.epochs(budget_tokens)         # warns (RepetitionWarning) above one epoch

Modules: corpus (finding and splitting documents), tokenizer (byte / BPE, token writer), cache (atomic
content-hashed entries), build (filling one entry), loader (grain windows and batches), dataset (prepare).
"""

from train.data.cache import CACHE_FORMAT_VERSION, default_cache_root
from train.data.corpus import TEXT_SUFFIXES, find_corpus
from train.data.dataset import Dataset, RepetitionWarning, check, epochs_for, prepare
from train.data.errors import DataError
from train.data.loader import TrainIterator
from train.data.tokenizer import EOD_ID, BpeTokenizer, ByteTokenizer

__all__ = [
    "CACHE_FORMAT_VERSION",
    "EOD_ID",
    "TEXT_SUFFIXES",
    "BpeTokenizer",
    "ByteTokenizer",
    "DataError",
    "Dataset",
    "RepetitionWarning",
    "TrainIterator",
    "check",
    "default_cache_root",
    "epochs_for",
    "find_corpus",
    "prepare",
]
