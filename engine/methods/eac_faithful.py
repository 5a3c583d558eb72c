"""``eac-faithful``: the EAC reference, exactly (Banzhaf-type values of the PIE surrogate)."""

from __future__ import annotations

import numpy as np

from ...kernels.shapley import softmax_banzhaf_mc
from ...kernels.surrogate import PIE_BATCH, PIE_EPOCHS, PIE_LR, PIE_MOMENTUM, fit_pie_sgd, softmax
from .base import Method, MethodInput, MethodResult

#: The reference's coalition count and Monte-Carlo samples per concept.
REFERENCE_COALITIONS = 2500
REFERENCE_MC_SAMPLES = 50_000


class EacFaithful(Method):
    """The reference: 2500 Bernoulli(½) coalitions, the PIE surrogate
    softmax(Fc·(W·b + c) + bias)[y] with the model's own head, fitted by SGD
    (lr 0.008, momentum 0.9, batch 100, BCE, 50 epochs), then 50 000 Monte-Carlo
    coalitions per concept (uniform coalitions: a Banzhaf estimate). The SGD runs
    on the collapsed map A = Fc·W (same iterates, see
    :func:`eac.kernels.surrogate.fit_pie_sgd`); the Monte-Carlo samples are shared
    by all concepts (same estimator) and the flipped evaluations are factorised
    (:func:`eac.kernels.shapley.softmax_banzhaf_mc`).
    """

    name = "eac-faithful"
    value_type = "banzhaf"
    summary = ("the reference exactly: 2500 Bernoulli(½) coalitions, PIE surrogate with the model's own head "
               "trained by SGD, 50 000 Monte-Carlo samples per concept (Banzhaf-type values)")
    cost = "2500 (--evaluations)"
    defaults = {"num_coalitions": REFERENCE_COALITIONS, "epochs": PIE_EPOCHS, "lr": PIE_LR,
                "momentum": PIE_MOMENTUM, "sgd_batch": PIE_BATCH, "mc_samples": REFERENCE_MC_SAMPLES}
    budget_option = "num_coalitions"
    min_budget = PIE_BATCH
    needs_features = False  # the collapsed fit needs the head, not the recorded features
    needs_head = True
    positive_options = ("num_coalitions", "epochs", "sgd_batch", "mc_samples")

    def run(self, inp: MethodInput) -> MethodResult:
        o = self.options
        n = inp.num_concepts
        weight, bias = inp.classifier.head
        coal = inp.rng.random((o["num_coalitions"], n)) < 0.5
        logits = inp.evaluator.evaluate(coal, desc="eac-faithful").logits
        probs = softmax(logits)
        values, stderr, losses = [], [], []
        for y in inp.targets:
            with inp.timed("fit"):
                a, const, loss = fit_pie_sgd(coal, probs[:, y], weight, bias, int(y), inp.rng, epochs=o["epochs"],
                                             lr=o["lr"], momentum=o["momentum"], batch_size=o["sgd_batch"])
            with inp.timed("values"):
                v, e = softmax_banzhaf_mc(a, const, [y], o["mc_samples"], inp.rng)
            values.append(v[:, 0])
            stderr.append(e[:, 0])
            losses.append(loss[-1])
        return MethodResult(np.array(values), np.array(stderr),
                            info={"surrogate": "PIE, SGD on BCE", "final_bce": losses})
