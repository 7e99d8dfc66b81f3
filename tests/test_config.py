"""One source for every learner default: the flags are built from remind.config.REMINDConfig."""
import dataclasses

import pytest

from image_classification_experiments import core50_experiment, imagenet_experiment as ie
from remind.config import _FLAG_DEFAULTS, FLAGS, PRESETS, REMINDConfig, config_from_args

BASE = ["--images_dir", "x", "--label_dir", "x", "--classifier_ckpt", "x.pth"]


def _actions(parser):
    return {action.dest: action for action in parser._actions}


@pytest.mark.parametrize("parser", [ie.get_args_parser(), core50_experiment.get_args_parser()],
                         ids=["imagenet_experiment", "core50_experiment"])
def test_every_flag_takes_its_default_and_help_from_the_dataclass(parser):
    actions = _actions(parser)
    for field in dataclasses.fields(REMINDConfig):
        flag = FLAGS.get(field.name)
        if flag is None or flag not in actions:
            continue  # grad_clip has no flag; core50 fixes num_classes and lr_examples_per_class itself
        expected = _FLAG_DEFAULTS.get(field.name, field.default)
        assert actions[flag].default == expected, field.name
        assert actions[flag].help == field.metadata["help"], field.name
    assert {FLAGS[f] for f in ("replays_per_step", "num_codebooks", "start_lr", "use_mixup")} <= set(actions)


def test_flags_without_values_give_the_dataclass_config_and_presets_round_trip():
    args = ie.parse_args(ie.get_args_parser(), BASE)
    assert config_from_args(args, lr_examples_per_class=1300) == REMINDConfig(use_random_resized_crops=False)
    for name, preset in PRESETS.items():
        args = ie.parse_args(ie.get_args_parser(), BASE + ["--preset", name])
        resolved = preset.lr_examples_per_class if not isinstance(preset.lr_examples_per_class, str) else 7
        assert config_from_args(args, lr_examples_per_class=resolved) == dataclasses.replace(
            preset, lr_examples_per_class=resolved), name


def test_the_help_of_the_learner_flags_names_the_defaults():
    text = ie.get_args_parser().format_help()
    for flag in ("--rehearsal_samples", "--num_codebooks", "--arch", "--split_at", "--weights", "--base_arch",
                 "--extract_features_from", "--classifier"):
        assert flag in text
