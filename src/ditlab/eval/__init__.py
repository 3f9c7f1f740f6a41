"""ditlab.eval: Fréchet distance on real pretrained features, precision/recall, IS and class accuracy.

    from ditlab.eval import evaluate
    evaluate(images_uint8_nhwc, labels, ref="digits:test", features=("effnet-lite0", "classifier:digits"))

`ditlab eval --samples samples.npz --ref digits:test` prints the same as one JSON line.
"""

from ditlab.eval.cache import cache_dir
from ditlab.eval.classifier import (
    CLASSIFIER_RECIPE,
    ClassifierFeatures,
    SmallConvNet,
    classifier_file,
    load_classifier,
    train_classifier,
)
from ditlab.eval.evaluate import default_features, evaluate, evaluate_model, fd_record, parse_features
from ditlab.eval.features import (
    EffNetLite0Features,
    FeatureExtractor,
    InceptionFeatures,
    get_feature_extractor,
)
from ditlab.eval.frechet import feature_statistics, frechet_distance, frechet_distance_from_features
from ditlab.eval.label_scores import class_accuracy, inception_score
from ditlab.eval.precision_recall import precision_recall
from ditlab.eval.reference import Reference, floor_fd, parse_reference, reference_stats
from ditlab.eval.shapes import evaluate_shapes, read_objects

__all__ = [
    "CLASSIFIER_RECIPE",
    "ClassifierFeatures",
    "EffNetLite0Features",
    "FeatureExtractor",
    "InceptionFeatures",
    "Reference",
    "SmallConvNet",
    "cache_dir",
    "class_accuracy",
    "classifier_file",
    "default_features",
    "evaluate_shapes",
    "evaluate",
    "evaluate_model",
    "fd_record",
    "feature_statistics",
    "floor_fd",
    "frechet_distance",
    "frechet_distance_from_features",
    "get_feature_extractor",
    "inception_score",
    "load_classifier",
    "parse_features",
    "parse_reference",
    "precision_recall",
    "read_objects",
    "reference_stats",
    "train_classifier",
]
