"""Configuration: defaults, the TOML file, environment overrides, --root."""

import pytest

from dicomvault.config import ConfigError, load


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load(environ={})
    assert settings.root.name == "dicomvault-data"
    assert settings["dicom"]["port"] == 11112
    assert settings["storage"]["sync"] == "always"
    assert settings.source is None


def test_file_then_environment_then_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dicomvault.toml").write_text(
        '[archive]\nroot = "from-file"\n[dicom]\nport = 4000\naet = "FILEAE"\n'
        '[modalities.PACS]\naet = "PACS"\nhost = "10.0.0.1"\nport = 104\n'
    )
    env = {
        "DICOMVAULT_DICOM_PORT": "5000",
        "DICOMVAULT_STORAGE_SYNC": "batch",
        "DICOMVAULT_DICOM_CHECK_CALLED_AET": "true",
        "DICOMVAULT_UNRELATED": "x",
    }
    settings = load(environ=env)
    assert settings.root.name == "from-file"
    assert settings["dicom"]["port"] == 5000
    assert settings["dicom"]["aet"] == "FILEAE"
    assert settings["dicom"]["check_called_aet"] is True
    assert settings["storage"]["sync"] == "batch"
    assert settings["modalities"]["PACS"]["port"] == 104
    assert load(environ=env, root=tmp_path / "cli").root == tmp_path / "cli"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[nosuch]\nx = 1\n", "unknown section"),
        ("[dicom]\nnosuch = 1\n", "unknown key"),
        ('[dicom]\nport = "abc"\n', "must be a int"),
        ("[dicom]\ncheck_called_aet = 3\n", "true or false"),
        ("[dicom\n", "dicomvault.toml"),
    ],
)
def test_invalid_files_are_named_clearly(tmp_path, text, message):
    path = tmp_path / "dicomvault.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(path, environ={})


def test_a_missing_or_unreadable_file_is_named_clearly(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match=f"configuration file {tmp_path}: Is a directory"):
        load(tmp_path)
