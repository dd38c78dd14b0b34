"""The plugin's Config and command-line values: settings are data, never code; ``--key=value`` keeps
its ``=`` signs; a setting without ``=`` is a clear error."""
import sys

import pytest

from conftest import tiny_config_dict


def test_command_line_values_are_data_never_code(tiny_dataset, monkeypatch):
    from recbole_macrec.config import Config, parse_value
    from recbole_macrec.errors import SettingError

    assert parse_value("__import__('os').getcwd()") == "__import__('os').getcwd()"
    assert parse_value("[text]") == ["text"] and parse_value("[text, collab]") == ["text", "collab"]
    assert parse_value("1e-3") == 0.001 and parse_value("[10,inf)") == "[10,inf)" and parse_value("False") is False
    monkeypatch.setattr(sys, "argv", ["x", "--run_label=__import__('os').getcwd()", "--gr_views=[text]"])
    config = Config(model="SASRec", dataset="tiny", config_dict=tiny_config_dict(tiny_dataset))
    assert config["run_label"] == "__import__('os').getcwd()" and config["gr_views"] == ["text"]
    monkeypatch.setattr(sys, "argv", ["x", "--epochs=abc"])
    with pytest.raises(SettingError, match="epochs must be an integer, got 'abc'"):
        Config(model="SASRec", dataset="tiny", config_dict=tiny_config_dict(tiny_dataset))
    monkeypatch.setattr(sys, "argv", ["x", "--sid_views=text"])
    with pytest.raises(SettingError, match="sid_views must be a list"):
        Config(model="SASRec", dataset="tiny", config_dict=tiny_config_dict(tiny_dataset))


def test_set_without_equals_is_a_clear_error():
    from recbole_macrec.config import parse_overrides
    from recbole_macrec.errors import SettingError

    with pytest.raises(SettingError, match="--set 'epochs5': expected KEY=VALUE"):
        parse_overrides(["epochs5"])


def test_command_line_values_keep_equals_signs_in_values():
    from recbole_macrec.config import command_line_values

    values, unrecognized = command_line_values(
        ["--run_label=TIGER restart=True", "--epochs=5", "--epochs=5", "-x", "--flag", "5", "--=3"])
    assert values == {"run_label": "TIGER restart=True", "epochs": "5"}
    assert unrecognized == ["-x", "--flag", "5", "--=3"]
    with pytest.raises(SyntaxError, match="--epochs is given twice, as '5' and '6'"):
        command_line_values(["--epochs=5", "--epochs=6"])


def test_config_reads_a_value_containing_equals(tiny_dataset, monkeypatch):
    from recbole_macrec.config import Config

    monkeypatch.setattr("sys.argv", ["run_recbole.py", "--run_label=TIGER restart=True", "--epochs=7"])
    config = Config("SASRec", "tiny", config_dict=tiny_config_dict(tiny_dataset))
    assert config["run_label"] == "TIGER restart=True" and config["epochs"] == 7
