"""Install Debian's WordNet 3.0 files as an nltk corpus in a folder the project owns.

nltk cannot download data here and refuses /usr/share/wordnet directly, so we copy the database
files into ``<dest>/corpora/wordnet/`` and write the ``lexnames`` file nltk expects.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

# The 45 lexicographer files of WordNet 3.0 (lexnames(5WN)): number, name, syntactic category.
LEXNAMES: tuple[tuple[str, int], ...] = (
    ("adj.all", 3), ("adj.pert", 3), ("adv.all", 4), ("noun.Tops", 1), ("noun.act", 1),
    ("noun.animal", 1), ("noun.artifact", 1), ("noun.attribute", 1), ("noun.body", 1),
    ("noun.cognition", 1), ("noun.communication", 1), ("noun.event", 1), ("noun.feeling", 1),
    ("noun.food", 1), ("noun.group", 1), ("noun.location", 1), ("noun.motive", 1), ("noun.object", 1),
    ("noun.person", 1), ("noun.phenomenon", 1), ("noun.plant", 1), ("noun.possession", 1),
    ("noun.process", 1), ("noun.quantity", 1), ("noun.relation", 1), ("noun.shape", 1),
    ("noun.state", 1), ("noun.substance", 1), ("noun.time", 1), ("verb.body", 2), ("verb.change", 2),
    ("verb.cognition", 2), ("verb.communication", 2), ("verb.competition", 2), ("verb.consumption", 2),
    ("verb.contact", 2), ("verb.creation", 2), ("verb.emotion", 2), ("verb.motion", 2),
    ("verb.perception", 2), ("verb.possession", 2), ("verb.social", 2), ("verb.stative", 2),
    ("verb.weather", 2), ("adj.ppl", 3),
)
_PATTERNS = ("data.", "index.", ".exc", "cntlist.rev", "lexnames")


def lexnames_text() -> str:
    """Why: nltk reads this file to name synsets' lexicographer files; Debian does not ship it."""
    return "".join(f"{i:02d}\t{name}\t{cat}\n" for i, (name, cat) in enumerate(LEXNAMES))


def install_wordnet(src: str | Path, dest: str | Path) -> Path:
    """Why: copy the database files where nltk will look, then write lexnames; idempotent."""
    src, dest = Path(src), Path(dest)
    if not (src / "data.noun").is_file():
        raise FileNotFoundError(
            f"WordNet data not found in {src}; install it with "
            "`apt-get install -y wordnet-base wordnet-sense-index`"
        )
    target = dest / "corpora" / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        if f.is_file() and (f.name.startswith(("data.", "index.")) or f.name.endswith(".exc") or f.name == "cntlist.rev"):
            shutil.copyfile(f, target / f.name)
    tmp = target / ".lexnames.tmp"
    tmp.write_text(lexnames_text())
    os.replace(tmp, target / "lexnames")
    return target


def default_nltk_dir() -> Path:
    """Why: the project owns its nltk data folder (repo/.nltk_data) unless NLTK_DATA says otherwise."""
    env = os.environ.get("COCU_NLTK_DATA")
    return Path(env) if env else Path(__file__).resolve().parent.parent / ".nltk_data"


def ensure_nltk_path() -> Path:
    """Why: make nltk find the project's WordNet without the user exporting NLTK_DATA."""
    d = default_nltk_dir()
    import nltk

    if str(d) not in nltk.data.path:
        nltk.data.path.insert(0, str(d))
    return d


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", default="/usr/share/wordnet", help="folder with Debian's WordNet files")
    p.add_argument("--dest", default=str(default_nltk_dir()), help="nltk data folder to populate")
    a = p.parse_args(argv)
    try:
        target = install_wordnet(a.src, a.dest)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"WordNet installed in {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
