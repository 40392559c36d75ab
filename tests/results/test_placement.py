"""Placement specs with stacks: what they select on one- and two-stack models, and the errors that name the key."""

from __future__ import annotations

import subprocess
import sys

import pytest

from raysearch_adapters.results.placement import PlacementError, describe_layout, parse_blocks
from raysearch_adapters.space_values import block_spec_problem, parse_placement

WHISPER = [("encoder", 4), ("decoder", 4)]  # global indices: encoder 0-3, decoder 4-7


@pytest.mark.parametrize("spec, blocks", [
    ("decoder:all", [4, 5, 6, 7]), ("decoder:top:2", [6, 7]), ("encoder:top:1", [3]), ("encoder:bottom:2", [0, 1]),
    ("decoder:0,2", [4, 6]), ("decoder:every:2", [4, 6]), ("encoder:window:1-3", [1, 2]),
    ("encoder:all+decoder:all", list(range(8))), ("decoder:top:1+encoder:top:1", [3, 7]),
    (" encoder : top:2 + decoder:1 ", [2, 3, 5]),
])
def test_stack_prefixed_specs_select_global_indices_encoder_first(spec, blocks):
    assert parse_blocks(spec, WHISPER) == blocks


@pytest.mark.parametrize("spec, blocks", [("all", [0, 1, 2]), ("top:1", [2]), ("encoder:top:2", [1, 2]),
                                          ("encoder:0,2", [0, 2])])
def test_a_one_stack_model_takes_plain_specs_and_its_encoder_prefix(spec, blocks):
    assert parse_blocks(spec, 3) == blocks == parse_blocks(spec, [("encoder", 3)])


def test_a_plain_spec_on_a_two_stack_model_says_to_name_the_stack():
    with pytest.raises(PlacementError, match=r"adapter.blocks: got 'top:2' \(this model has several stacks "
                                             r"\(encoder, decoder\): name the stack, e.g. decoder:top:2 or "
                                             r"encoder:top:2\+decoder:top:2\); the model has encoder blocks 0-3 and "
                                             r"decoder blocks 4-7"):
        parse_blocks("top:2", WHISPER)


def test_decoder_blocks_on_a_ctc_model_are_refused_naming_the_key():
    with pytest.raises(PlacementError, match=r"adapter.blocks: got 'decoder:all' \(the model has no decoder blocks\); "
                                             r"the model has 6 blocks \(0-5\)"):
        parse_blocks("decoder:all", 6)


@pytest.mark.parametrize("spec, why", [("decoder:top:5", "K must be between 1 and 4"),
                                       ("encoder:7", "block 7 does not exist"),
                                       ("decoder:window:2-6", r"need 0 <= A < B <= 4")])
def test_numbers_are_checked_within_their_stack(spec, why):
    with pytest.raises(PlacementError, match=why):
        parse_blocks(spec, WHISPER)


@pytest.mark.parametrize("spec, why", [
    ("all+decoder:all", "each name their stack"), ("decoder:all+decoder:top:1", "a stack is named twice"),
    ("decodr:all", "not a block-set spec"), ("decoder:", "not a block-set spec"), ("decoder:top:0", "K must be >= 1"),
])
def test_syntax_errors_are_found_without_a_model(spec, why):
    assert why in block_spec_problem(spec)
    with pytest.raises(ValueError, match=why):
        parse_placement(spec)


def test_describe_layout():
    assert describe_layout(6) == "6 blocks (0-5)"
    assert describe_layout(WHISPER) == "encoder blocks 0-3 and decoder blocks 4-7"


def test_placement_module_stays_torch_free():
    code = ("import sys; import raysearch_adapters.results.placement, raysearch_adapters.space_values; "
            "print(any(m in sys.modules for m in ('torch', 'transformers', 'ray')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
