"""The experiments' shared writer: results appear whole or not at all."""

import json
import os

import pytest

import experiment_utils as eu


def test_write_json_replaces_the_file_only_once_the_new_one_is_complete(tmp_path, monkeypatch):
  path = str(tmp_path / "results.json")
  eu.write_json(path, {"run": 1})
  real_dump = json.dump

  def dump_then_die(data, f, **kwargs):  # a run killed halfway through writing
    f.write('{"run": ')
    raise KeyboardInterrupt

  monkeypatch.setattr(json, "dump", dump_then_die)
  with pytest.raises(KeyboardInterrupt):
    eu.write_json(path, {"run": 2})
  monkeypatch.setattr(json, "dump", real_dump)
  with open(path) as f:
    assert json.load(f) == {"run": 1}  # the earlier run's results, intact
  assert os.listdir(tmp_path) == ["results.json"]  # and no partial file left behind
  eu.write_json(path, {"run": 3})
  with open(path) as f:
    assert json.load(f) == {"run": 3}
