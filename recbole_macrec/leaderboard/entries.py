"""The rows a leaderboard runs: models, the ablation preset (``properties/ablation/*.yaml``), and
the labels and settings digests their runs will record."""
import sys
from dataclasses import dataclass, field

import yaml

from recbole_macrec.config import PROPERTIES_DIR
from recbole_macrec.errors import SettingError

ABLATIONS = ["wo_con", "released_con", "same_item_con", "wo_align", "wo_implicit", "wo_explicit"]   # properties/ablation/<name>.yaml


@dataclass
class Entry:
    """One leaderboard row: a display label, the model, and extra config files for it."""
    label: str
    model: str
    config_files: list = field(default_factory=list)


def ablation_entry(name):
    """The leaderboard row of one ablation yaml, named by its ``run_label``."""
    path = PROPERTIES_DIR / "ablation" / f"{name}.yaml"
    with open(path) as f:
        label = yaml.safe_load(f)["run_label"]
    return Entry(label, "MACRec", [str(path)])


def changes_prestage(name):
    """True when ablation ``name`` only switches off a term of the semantic-ID pre-stage."""
    with open(PROPERTIES_DIR / "ablation" / f"{name}.yaml") as f:
        keys = set(yaml.safe_load(f)) - {"run_label"}
    return all(key.startswith("sid_") for key in keys)


def entries_for(models, preset=None, sid_method=None):
    """The rows to run. The ablation preset leaves out the pre-stage ablations when the dataset
    imports published codes (``sid_method: import``): those rows could not differ from MACRec's."""
    entries = [Entry(m, m) for m in models]
    if preset == "ablation":
        names = ABLATIONS
        if sid_method == "import":
            skipped = [n for n in ABLATIONS if changes_prestage(n)]
            names = [n for n in ABLATIONS if n not in skipped]
            print(f"ablation preset: {', '.join(skipped)} left out: they change the semantic-ID "
                  f"pre-stage, which this dataset skips (sid_method: import, published codes). To run "
                  f"them, train codes: --set sid_method=macrec (needs the dataset's item views).",
                  file=sys.stderr)
        entries = [Entry("MACRec", "MACRec")] + [ablation_entry(name) for name in names]
    elif preset is not None:
        raise ValueError(f"unknown preset '{preset}' (known: ablation)")
    return entries


def entry_config(entry, dataset, seed, config_files, overrides):
    """The Config a run of ``entry`` would use (nothing loads)."""
    from recbole_macrec.config import Config
    from recbole_macrec.registry import get_model

    return Config(model=get_model(entry.model), dataset=dataset,
                  config_file_list=(config_files + entry.config_files) or None,
                  config_dict={**overrides, "seed": seed})


def current_settings_digest(entry, dataset, seed, config_files, overrides):
    """The settings digest a run of ``entry`` would record now."""
    from recbole_macrec.results import effective_settings, settings_digest

    return settings_digest(effective_settings(entry_config(entry, dataset, seed, config_files, overrides)))


def label_entries(entries, dataset, config_files, overrides):
    """A row named by the model takes the run_label its settings give (``--set run_label=...``, a
    config file's): run files are named by label, so two settings of one model never share one.
    Two rows with one label are an error."""
    for entry in entries:
        if entry.label == entry.model:
            entry.label = entry_config(entry, dataset, 2020, config_files, overrides)["run_label"] or entry.label
    labels = [e.label for e in entries]
    twice = next((label for label in labels if labels.count(label) > 1), None)
    if twice:
        raise SettingError(f"two rows would be named '{twice}' (one run_label for several models?): "
                           f"give each row its own label")
    return entries
