"""What a search checks before it writes anything: replay and distillation manifests, keys and ranges."""

from __future__ import annotations

import json
import shutil

import pytest

from builders import tiny_conformer, tiny_search_overrides
from raysearch_adapters.config import ConfigError, load_config
from raysearch_adapters.errors import UserError
from raysearch_adapters.models.checkpoint import save_checkpoint
from raysearch_adapters.search.preflight import may_be_positive, preflight


@pytest.fixture(scope="module")
def model_and_overrides(search_data, tmp_path_factory):
    corpus, checkpoint, cache = search_data
    tmp = tmp_path_factory.mktemp("preflight")
    return tiny_conformer(seed=0, num_layers=2), lambda *extra: tiny_search_overrides(corpus, checkpoint, cache, tmp,
                                                                                       "pre", *extra)


def _check(model_and_overrides, *extra):
    model, overrides = model_and_overrides
    return preflight(load_config([], overrides(*extra)), model)


def test_the_default_pools_are_the_original_training_set(model_and_overrides):
    checked = _check(model_and_overrides)
    cfg = load_config([], model_and_overrides[1]())
    assert cfg.data.replay_manifest == cfg.data.distill_manifest == cfg.data.original_train
    assert checked[-2:] == [cfg.data.original_train, cfg.data.original_train]


@pytest.mark.parametrize("key", ["replay_manifest", "distill_manifest"])
def test_a_missing_pool_manifest_names_the_key_and_file(model_and_overrides, tmp_path, key):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=rf"data.{key}: {missing} not found, but .* asks for"):
        _check(model_and_overrides, f"data.{key}={missing}")


@pytest.mark.parametrize("key", ["replay_manifest", "distill_manifest"])
def test_an_empty_pool_manifest_names_the_file(model_and_overrides, tmp_path, key):
    empty = tmp_path / "empty.json"
    empty.write_text("")
    with pytest.raises(UserError, match=rf"{empty}: the manifest is empty"):
        _check(model_and_overrides, f"data.{key}={empty}")


def test_replay_without_a_replay_manifest_names_both_keys(model_and_overrides):
    with pytest.raises(ConfigError, match=r"data.replay_manifest: empty, but train.replay / search.space.replay asks "
                                          r"for replay; set data.replay_manifest \(default: data.original_train\)"):
        _check(model_and_overrides, "data.replay_manifest=", "search.space.replay=0.3")
    # no replay asked for: no replay manifest needed
    _check(model_and_overrides, "data.replay_manifest=", "search.space.replay=0.0")
    assert not may_be_positive(load_config([], model_and_overrides[1]("search.space.replay=0.0")), "replay")


def test_distillation_on_the_dev_set_is_refused(model_and_overrides):
    cfg = load_config([], model_and_overrides[1]())
    with pytest.raises(ConfigError, match=r"data.distill_manifest: .* is the same manifest as data.original_dev "
                                          r"\(.*\); allowed: original-domain audio outside the dev and test sets"):
        _check(model_and_overrides, f"data.distill_manifest={cfg.data.original_dev}")


def test_a_copy_of_the_dev_set_or_one_sharing_its_utterances_is_refused(model_and_overrides, tmp_path):
    cfg = load_config([], model_and_overrides[1]())
    copy = tmp_path / "copy.json"
    shutil.copyfile(cfg.data.original_test, copy)  # same bytes, other path
    with pytest.raises(ConfigError, match=r"data.replay_manifest: .*copy.json is the same manifest as "
                                          r"data.original_test"):
        _check(model_and_overrides, f"data.replay_manifest={copy}")
    # one dev utterance mixed into the training pool, written with absolute audio paths
    from raysearch_adapters.data.manifest import read_manifest

    lines = [u.to_dict() for u in read_manifest(cfg.data.original_train)]
    lines.append(read_manifest(cfg.data.original_dev)[0].to_dict())
    mixed = tmp_path / "mixed.json"
    mixed.write_text("".join(json.dumps(d) + "\n" for d in lines))
    with pytest.raises(ConfigError, match=rf"data.distill_manifest: {mixed} shares 1 of its {len(lines)} utterances "
                                          rf"with data.original_dev \({cfg.data.original_dev}\), the first at "
                                          rf"{mixed}:{len(lines)} = {cfg.data.original_dev}:1; allowed"):
        _check(model_and_overrides, f"data.distill_manifest={mixed}")


def test_untranscribed_audio_is_enough_for_distillation(model_and_overrides, tmp_path):
    cfg = load_config([], model_and_overrides[1]())
    from raysearch_adapters.data.manifest import read_manifest

    lines = [{k: v for k, v in u.to_dict().items() if k != "text"} for u in read_manifest(cfg.data.original_train)]
    untranscribed = tmp_path / "untranscribed.json"
    untranscribed.write_text("".join(json.dumps(d) + "\n" for d in lines))
    assert str(untranscribed) in _check(model_and_overrides, f"data.distill_manifest={untranscribed}")
    # but replay trains on transcripts
    with pytest.raises(UserError, match=r"untranscribed.json:1: missing key 'text'"):
        _check(model_and_overrides, f"data.replay_manifest={untranscribed}")


@pytest.mark.parametrize("override, match", [
    ("train.replay=1.0", r"train.replay: got 1.0; must be a number in \[0, 1\)"),
    ("train.replay=-0.1", r"train.replay: got -0.1; must be a number in \[0, 1\)"),
    ("train.distill_weight=-1", r"train.distill_weight: got -1"),
    ("search.space.replay=[0.0, 1.5]", r"search.space.replay.choices\[1\]: got 1.5; must be a number in \[0, 1\)"),
    ("search.space.distill_weight={low: -1.0, high: 5.0}", r"search.space.distill_weight.low: got -1.0; must be a "
                                                          r"number >= 0"),
    ("search.space.distill_weight={low: 0.0, high: 5.0, log: true}", r"search.space.distill_weight.low: got 0.0; "
                                                                     r"must be > 0 \(log scale\)"),
    ("search.space.dim={choices: [8], allow_zero: true}", r"search.space.dim.allow_zero: got True; applies to a "
                                                         r"low/high range only"),
    ("train.distill_seconds=0", r"train.distill_seconds: got 0"),
    ("data.pool_hours=-1", r"data.pool_hours: got -1"),
    ("data.max_duration=0", r"data.max_duration: got 0.0; must be > 0"),
    ("data.max_duration=-30", r"data.max_duration: got -30.0; must be > 0"),
])
def test_bad_protection_values_name_the_key_and_the_allowed_range(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config([], [override])


def test_a_bad_pool_manifest_fails_the_search_before_anything_is_written(ray_session, search_data, tmp_path):
    from raysearch_adapters.search import run

    missing = tmp_path / "nope.json"
    overrides = tiny_search_overrides(*search_data, tmp_path, "pool", f"data.distill_manifest={missing}")
    with pytest.raises(ConfigError, match="data.distill_manifest"):
        run.run_search(load_config([], overrides))
    assert not (tmp_path / "pool").exists()


def test_a_placement_the_model_cannot_take_is_refused_before_anything_is_written(search_data, tmp_path):
    model = tiny_conformer(seed=0, num_layers=2)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model)
    overrides = tiny_search_overrides(search_data[0], path, search_data[2], tmp_path, "x", "search.space.blocks=[top:3]")
    with pytest.raises(ConfigError, match=r"search.space.blocks.choices\[0\].*'top:3'.*the model has 2 blocks"):
        preflight(load_config([], overrides), model)


_NO_SINGLES = ('data.original_dev=""', 'data.original_test=""')


@pytest.mark.parametrize("overrides, match", [
    (_NO_SINGLES + ("data.protected=[{name: clean, dev: a.json, test: b.json}, {name: clean, dev: c.json, "
                    "test: d.json}]",),
     r"data.protected\[1\].name: got 'clean'; is also the name of data.protected\[0\]"),
    (('data.new_dev=""', 'data.new_test=""', *_NO_SINGLES,
      "data.targets=[{name: accents, dev: a.json, test: b.json}]",
      "data.protected=[{name: accents, dev: c.json, test: d.json}]"),
     r"data.protected\[0\].name: got 'accents'; is also the name of data.targets\[0\]"),
    (_NO_SINGLES + ("data.protected=[{name: new, dev: a.json, test: b.json}]",),
     r"data.protected\[0\].name: got 'new'; is the name of the default set data.new_dev"),
    (_NO_SINGLES + ("data.protected=[{name: noisy, test: b.json}]",),
     r"data.protected\[0\].dev: got ''; must name the set's dev manifest"),
    (_NO_SINGLES + ("data.protected=[{name: noisy, dev: a.json}]",),
     r"data.protected\[0\].test: got ''; must name the set's test manifest"),
    (_NO_SINGLES + ("data.protected=[{name: 'no spaces', dev: a.json, test: b.json}]",),
     r"data.protected\[0\].name: got 'no spaces'; must be a name of letters, digits"),
    (_NO_SINGLES + ("data.protected=[{name: noisy, dev: a.json, test: b.json, kappa: -1}]",),
     r"data.protected\[0\].kappa: got -1.0; must be >= 0"),
    (_NO_SINGLES + ("data.protected=[{name: noisy, dev: a.json, test: b.json, kappa_mode: percent}]",),
     r"data.protected\[0\].kappa_mode: got 'percent'; allowed: absolute, relative"),
    (("data.original_dev=o.json", "data.protected=[{name: noisy, dev: a.json, test: b.json}]"),
     r"data.original_dev: got '.*o.json'; must be empty when data.protected lists the sets"),
    (('data.new_dev=""', 'data.new_test=""', "data.targets=[{name: t, dev: a.json, test: b.json, kappa: 2}]"),
     r"data.targets\[0\].kappa: got 2.0; applies to protected sets only"),
    (("data.protected=[{name: noisy, dev: a.json, tset: b.json}]",),
     r"data.targets / data.protected: an entry has the unknown key 'tset' \(allowed in each entry: name, dev, test, "
     r"kappa, kappa_mode\)"),
    (("search.max_new_loops=-1",), r"search.max_new_loops: got -1; must be >= 0"),
    (("search.max_new_loops=0.5",), r"search.max_new_loops: Value '0.5' of type 'float' could not be converted to "
                                    r"Integer"),
    (("search.confidence=1.0",), r"search.confidence: got 1.0"),
    (("search.confidence=0.5",), r"search.confidence: got 0.5"),
])
def test_bad_sets_name_the_key_what_was_found_and_what_is_allowed(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config([], list(overrides))


def _set_overrides(corpus, protected_dev, protected_test):
    return ['data.original_dev=""', 'data.original_test=""',
            f"data.protected=[{{name: clean, dev: {corpus}/original/dev.json, test: {corpus}/original/test.json}}, "
            f"{{name: noisy, dev: {protected_dev}, test: {protected_test}}}]"]


def test_a_protected_set_that_is_a_new_domain_set_is_refused_naming_both(model_and_overrides, search_data):
    corpus = search_data[0]
    with pytest.raises(ConfigError, match=rf"data.protected\[1\].dev: {corpus}/new/dev.json is the same manifest as "
                                          rf"data.new_dev \({corpus}/new/dev.json\); allowed: a protected set apart"):
        _check(model_and_overrides, *_set_overrides(corpus, f"{corpus}/new/dev.json", f"{corpus}/original/test.json"))
    with pytest.raises(ConfigError, match=r"data.protected\[1\].test: .* is the same manifest as data.new_train"):
        _check(model_and_overrides, *_set_overrides(corpus, f"{corpus}/original/dev.json",
                                                    f"{corpus}/new/train.json"))


def test_a_pool_drawn_from_a_protected_set_is_refused_naming_both(model_and_overrides, search_data, tmp_path):
    corpus = search_data[0]
    lines = (corpus / "original" / "dev.json").read_text().splitlines()
    noisy = tmp_path / "noisy.json"
    noisy.write_text("".join(json.dumps({**json.loads(line), "audio_filepath": str(
        corpus / "original" / json.loads(line)["audio_filepath"])}) + "\n" for line in lines[:4]))
    with pytest.raises(ConfigError, match=r"data.distill_manifest: .* is the same manifest as data.protected\[1\].dev"):
        _check(model_and_overrides, *_set_overrides(corpus, noisy, f"{corpus}/original/test.json"),
               f"data.distill_manifest={noisy}", "train.replay=0")


def test_a_bad_set_fails_the_search_before_anything_is_written(ray_session, search_data, tmp_path):
    from raysearch_adapters.search import run

    corpus = search_data[0]
    overrides = tiny_search_overrides(*search_data, tmp_path, "sets", *_set_overrides(
        corpus, f"{corpus}/new/dev.json", f"{corpus}/original/test.json"))
    with pytest.raises(ConfigError, match=r"data.protected\[1\].dev"):
        run.run_search(load_config([], overrides))
    assert not (tmp_path / "sets").exists()


@pytest.mark.parametrize("split", ["dev", "test"])
def test_a_new_domain_dev_or_test_set_as_the_training_set_is_refused(model_and_overrides, search_data, split):
    corpus = search_data[0]
    # its "test WER, evaluated once" would be a training WER
    with pytest.raises(ConfigError, match=rf"data.new_train: {corpus}/new/{split}.json is the same manifest as "
                                          rf"data.new_{split} \({corpus}/new/{split}.json\); allowed: training audio "
                                          r"outside the dev and test sets"):
        _check(model_and_overrides, f"data.new_train={corpus}/new/{split}.json")


def _absolute_lines(manifest):
    return [{**json.loads(line), "audio_filepath": str(manifest.parent / json.loads(line)["audio_filepath"])}
            for line in manifest.read_text().splitlines()]


def _write_lines(path, lines):
    path.write_text("".join(json.dumps(d) + "\n" for d in lines))
    return path


def test_a_training_set_sharing_test_utterances_is_refused_naming_both_lines(model_and_overrides, search_data,
                                                                             tmp_path):
    corpus = search_data[0]
    test = corpus / "new" / "test.json"
    train_lines, test_lines = _absolute_lines(corpus / "new" / "train.json"), _absolute_lines(test)
    mixed = _write_lines(tmp_path / "mixed.json", train_lines[:3] + [test_lines[2], test_lines[4]] + train_lines[3:])
    with pytest.raises(ConfigError, match=rf"data.new_train: {mixed} shares 2 of its {len(train_lines) + 2} "
                                          rf"utterances with data.new_test \({test}\), the first at {mixed}:4 = "
                                          rf"{test}:3; allowed: training audio outside the dev and test sets"):
        _check(model_and_overrides, f"data.new_train={mixed}")


def test_a_copy_of_a_dev_file_under_another_name_is_the_same_utterance(model_and_overrides, search_data, tmp_path):
    corpus = search_data[0]
    dev = corpus / "new" / "dev.json"
    copied = _absolute_lines(dev)[1]
    audio = tmp_path / "renamed.wav"
    shutil.copyfile(copied["audio_filepath"], audio)
    train_lines = _absolute_lines(corpus / "new" / "train.json")
    train = _write_lines(tmp_path / "train.json", train_lines + [{**copied, "audio_filepath": str(audio)}])
    with pytest.raises(ConfigError, match=rf"data.new_train: {train} shares 1 of .* with data.new_dev .* the first at "
                                          rf"{train}:{len(train_lines) + 1} = {dev}:2; {audio} is a copy of "
                                          rf"{copied['audio_filepath']}"):
        _check(model_and_overrides, f"data.new_train={train}")


def test_a_training_set_sharing_a_listed_targets_utterances_is_refused(model_and_overrides, search_data, tmp_path):
    corpus = search_data[0]
    accents = _write_lines(tmp_path / "accents.json", _absolute_lines(corpus / "new" / "train.json")[-2:])
    with pytest.raises(ConfigError, match=r"data.new_train: .* shares 2 of its .* with data.targets\[1\].test "
                                          rf"\({accents}\)"):
        _check(model_and_overrides, 'data.new_dev=""', 'data.new_test=""',
               f"data.targets=[{{name: new, dev: {corpus}/new/dev.json, test: {corpus}/new/test.json}}, "
               f"{{name: accents, dev: {corpus}/new/dev.json, test: {accents}}}]")


def test_only_files_of_equal_size_are_compared_and_at_most_the_budget_is_read(tmp_path):
    from raysearch_adapters.search.preflight import _AudioContents

    files = {name: tmp_path / name for name in ("dev.wav", "copy.wav", "other.wav", "longer.wav")}
    for name, data in (("dev.wav", b"a" * 100), ("copy.wav", b"a" * 100), ("other.wav", b"b" * 100),
                       ("longer.wav", b"a" * 101)):
        files[name].write_bytes(data)
    dev = {str(files["dev.wav"])}
    train = {str(files[n]) for n in ("copy.wav", "other.wav", "longer.wav")}
    contents = _AudioContents()
    assert contents.copies(train, dev) == {str(files["copy.wav"]): str(files["dev.wav"])}
    assert str(files["longer.wav"]) not in contents._digests  # another size: never read
    short = _AudioContents(budget=150)  # room for the dev file only: the others are not compared
    assert short.copies(train, dev) == {} and short.unread == 2
    link = tmp_path / "link.wav"
    link.symlink_to(files["dev.wav"])
    assert _AudioContents(budget=0).copies({str(link)}, dev) == {str(link): str(files["dev.wav"])}  # nothing read


def test_a_line_longer_than_max_duration_is_refused_naming_file_line_and_key(model_and_overrides, search_data):
    model, overrides = model_and_overrides
    assert load_config([], overrides()).data.duration_limit(model.max_duration) == 60.0  # null: the model's bound
    train = search_data[0] / "new" / "train.json"
    with pytest.raises(UserError, match=rf"{train}:1: duration \d+\.\d{{3}}s is over data.max_duration \(0.5s\); "
                                        r"expected at most 0.5s"):
        _check(model_and_overrides, "data.max_duration=0.5")
