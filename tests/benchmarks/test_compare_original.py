"""compare_original.py without torch or the original: its arguments, its limits arithmetic, its table (no timing)."""

import importlib.util
import os
import sys

import pytest

import huginn_jax as hj
from huginn_jax import flops

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def compare():
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))  # the script imports its sibling _common
  try:
    spec = importlib.util.spec_from_file_location("compare_original",
                                                  os.path.join(ROOT, "benchmarks", "compare_original.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_original"] = module  # its dataclasses look their module up while it is executed
    spec.loader.exec_module(module)
  finally:
    sys.path.pop(0)
  return module


def _setting(compare, *argv):
  return compare.setting(compare.parser().parse_args(["--original", "somewhere", *argv]))


def test_default_setting_is_issue_15s_shape(compare):
  s = _setting(compare)
  assert (s.d_model, s.heads, s.mlp, s.vocab, s.layers, s.num_steps) == (512, 8, 1536, 32768, (2, 4, 2), 8)
  assert (s.prefill_len, s.prompt_len, s.new_tokens, s.train_len, s.depth) == (512, 64, 32, 256, (6, 2))


def test_flags_override_the_shape_field_by_field(compare):
  s = _setting(compare, "--shape", "quick", "--layers", "1", "3", "1", "--depth", "4", "2", "--vocab", "1000")
  assert (s.d_model, s.layers, s.depth, s.vocab) == (128, (1, 3, 1), (4, 2), 1000)
  with pytest.raises(SystemExit, match="new-tokens"):
    _setting(compare, "--new-tokens", "1")
  with pytest.raises(SystemExit, match="multiple of --heads"):
    _setting(compare, "--d-model", "100", "--heads", "8")


def test_a_path_without_the_original_is_refused_by_name(compare, tmp_path):
  with pytest.raises(SystemExit, match="raven_modeling_minimal.py.*recurrent-pretraining"):
    compare.check_original_path(str(tmp_path))
  (tmp_path / "recpre").mkdir()
  for name in compare.ORIGINAL_FILES:
    (tmp_path / name).write_text("")
  assert compare.check_original_path(str(tmp_path)) == str(tmp_path)


def test_matmul_shapes_are_the_prefills_weight_matmuls(compare):
  s = _setting(compare)
  config = hj.get_config("tiny", d_model=s.d_model, n_heads=s.heads, head_dim=s.d_model // s.heads,
                         intermediate_size=s.mlp, vocab_size=s.vocab, param_dtype="float32",
                         compute_dtype="float32")
  shapes = compare.matmul_shapes(config, s)
  per_token = sum(uses * 2 * k * n for _, _, k, n, uses in shapes)
  attention = flops.forward_flops_per_token(config, s.prefill_len, s.num_steps) - per_token
  layers = sum(s.layers[::2]) + s.num_steps * s.layers[1]
  assert attention == pytest.approx(layers * 2 * 2 * s.d_model * s.prefill_len / 2)
  assert flops.forward_flops_per_token(config, s.prefill_len, s.num_steps) / 1e6 == pytest.approx(306, abs=1)


def test_limits_are_flops_at_the_gemm_rate_and_decoding_bytes_at_the_bandwidth(compare):
  prefill = {"work": "prefill", "flops_per_token": 300e6}
  assert compare.limit_tokens_per_s(prefill, 390e9, 20e9) == pytest.approx(1300.0)
  decode = {"work": "decode", "batch": 8, "bytes_per_step": 600e6, "flops_per_step": 8 * 300e6}
  assert compare.limit_tokens_per_s(decode, 390e9, 20e9) == pytest.approx(8 / 0.03)  # bandwidth-bound
  assert compare.limit_tokens_per_s(decode, 24e9, 20e9) == pytest.approx(8 / 0.1)  # compute-bound


def test_table_has_the_ratio_and_the_fractions_of_the_limit(compare):
  row = compare.with_limit(compare.result_row("prefill", "prefill", {"original": 800.0, "huginn-jax": 1200.0},
                                              {"original": [800.0], "huginn-jax": [1200.0]}), 1600.0)
  assert row["ratio"] == pytest.approx(1.5)
  line = compare.table([row]).splitlines()[-1]
  assert line == "| prefill | 800 | 1,200 | 1.50 | 1,600 | 50% | 75% |"


def test_other_processes_cpu_share_is_a_fraction_or_unknown(compare):
  fraction = compare.OtherCpu().fraction()
  assert fraction is None or fraction >= 0.0
  assert "BUSY" in compare.busy_note(0.5) and "BUSY" not in compare.busy_note(0.01)
  assert "unknown" in compare.busy_note(None)
