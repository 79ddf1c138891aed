"""The tiny Python corpus the end-to-end trainings read: 40 files, enough for a train and an eval split."""

import pathlib

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n"


def micro_corpus(tmp_path: pathlib.Path) -> pathlib.Path:
    """tmp_path/corpus, written once (a second call in the same test reuses it)."""
    corpus = tmp_path / "corpus"
    if not corpus.exists():
        corpus.mkdir()
        for i in range(40):
            (corpus / f"f{i}.py").write_text(TEXT.replace("add", f"add{i}") * 12)
    return corpus
