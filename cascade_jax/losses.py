"""Training objectives as pure functions of arrays: cross entropy, knowledge distillation and DAR.

  cross_entropy(logits, labels, mask), distillation_loss(student, teacher, T, mask), dar_loss(...)
  self_distillation_loss(students [L-1,B,C], teacher [B,C], mask)      # FastBERT
  patient_loss(student_cls [J,B,H], teacher_cls [J,B,H], mask)         # BERT-PKD
  register_dar_variant(name, fn) / get_dar_variant(name)      # all_pairs, authors, logistic, soft, or your own

Masked rows never count (a mean over nothing is 0, never NaN); conventions and DAR's maths are in docs/design.md.
"""

from __future__ import annotations

from typing import Callable, Protocol

import jax
import jax.numpy as jnp

__all__ = [
    "confidence_from_logits",
    "cross_entropy",
    "distillation_loss",
    "distillation_objective",
    "self_distillation_loss",
    "patient_loss",
    "gather_batch",
    "dar_loss",
    "DarVariant",
    "register_dar_variant",
    "get_dar_variant",
    "dar_variant_names",
]


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _float_dtype(x: jax.Array) -> jnp.dtype:
    """The dtype computations on ``x`` run in: at least float32 (bf16/fp16 -> float32, float64 stays)."""
    return jnp.promote_types(jnp.result_type(x), jnp.float32)


def _row_weights(mask: jax.Array | None, shape: tuple[int, ...], dtype) -> jax.Array:
    """``mask`` as a 0/1 array of ``dtype`` (all ones when ``mask`` is None)."""
    if mask is None:
        return jnp.ones(shape, dtype)
    return (jnp.asarray(mask) != 0).astype(dtype)


def _masked_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """``sum(w * v) / sum(w)`` for weights ``w >= 0``, and exactly 0 (zero gradient) when ``sum(w) == 0``.

    ``values`` must already be finite where ``weights`` is 0 (callers sanitise masked rows first).
    """
    total = jnp.sum(weights)
    return jnp.sum(weights * values) / jnp.where(total > 0, total, 1.0)


def confidence_from_logits(logits: jax.Array) -> jax.Array:
    """Model confidence ``c(x) = max_y softmax(logits)_y`` over the last axis.

    Computed as ``exp(max_y log_softmax(logits)_y)`` in at least float32, so bf16 logits give a float32
    confidence and the result is accurate near 1. Shape: ``logits.shape[:-1]``.
    """
    logits = jnp.asarray(logits)
    log_probs = jax.nn.log_softmax(logits.astype(_float_dtype(logits)), axis=-1)
    return jnp.exp(jnp.max(log_probs, axis=-1))


# ----------------------------------------------------------------------------------------------------------------
# cross entropy and knowledge distillation


def cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross entropy over the unmasked rows.

    ``CE = (1 / sum_i m_i) * sum_i m_i * (-log softmax(z_i)_{y_i})``, computed with ``log_softmax`` in at least
    float32. ``logits``: ``[..., C]``; ``labels``: integer ``[...]``; ``mask``: ``[...]`` (None = all rows).
    Labels of masked rows are ignored (they may be out of range, e.g. -100). All rows masked -> 0.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    dtype = _float_dtype(logits)
    weights = _row_weights(mask, labels.shape, dtype)
    safe_labels = jnp.where(weights > 0, labels, 0).astype(jnp.int32)
    log_probs = jax.nn.log_softmax(logits.astype(dtype), axis=-1)
    nll = -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
    nll = jnp.where(weights > 0, nll, 0.0)
    return _masked_mean(nll, weights)


def distillation_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    temperature: float,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Vanilla knowledge distillation (Hinton et al., 2015), averaged over the unmasked rows.

    With ``p = softmax(teacher / T)`` and ``q = softmax(student / T)``::

        KD = T^2 * (1 / sum_i m_i) * sum_i m_i * KL(p_i || q_i),   KL(p || q) = sum_k p_k (log p_k - log q_k).

    The ``T^2`` factor keeps gradient magnitudes comparable across temperatures. The teacher is a fixed target:
    no gradient flows into ``teacher_logits``. Terms with ``p_k == 0`` count as 0 (``0 log 0 = 0``).
    """
    student_logits = jnp.asarray(student_logits)
    teacher_logits = jax.lax.stop_gradient(jnp.asarray(teacher_logits))
    dtype = jnp.promote_types(_float_dtype(student_logits), _float_dtype(teacher_logits))
    weights = _row_weights(mask, student_logits.shape[:-1], dtype)
    keep = (weights > 0)[..., None]
    student = jnp.where(keep, student_logits.astype(dtype), 0.0) / temperature
    teacher = jnp.where(keep, teacher_logits.astype(dtype), 0.0) / temperature
    log_q = jax.nn.log_softmax(student, axis=-1)
    log_p = jax.nn.log_softmax(teacher, axis=-1)
    p = jnp.exp(log_p)
    kl = jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)
    return (temperature**2) * _masked_mean(kl, weights)


def distillation_objective(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    labels: jax.Array,
    *,
    temperature: float,
    alpha: float,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Hinton's combined objective ``alpha * KD + (1 - alpha) * CE(student, labels)``.

    ``KD`` is :func:`distillation_loss` (already scaled by ``T^2``); ``CE`` is :func:`cross_entropy` at ``T = 1``.
    ``alpha = 1`` is pure distillation, ``alpha = 0`` plain fine-tuning.
    """
    kd = distillation_loss(student_logits, teacher_logits, temperature, mask)
    ce = cross_entropy(student_logits, labels, mask)
    return alpha * kd + (1.0 - alpha) * ce


# ----------------------------------------------------------------------------------------------------------------
# FastBERT's self-distillation and BERT-PKD's patient loss


def self_distillation_loss(
    student_logits: jax.Array,
    teacher_logits: jax.Array,
    mask: jax.Array | None = None,
    *,
    direction: str = "student_teacher",
) -> jax.Array:
    """FastBERT's self-distillation (Liu et al., 2020): the internal ("student") classifiers learn the final
    ("teacher") classifier's distribution, summed over the students, each a mean over the unmasked rows.

    With ``p_s = softmax(student_l)`` and ``p_t = softmax(teacher)`` (no temperature)::

        loss = sum_l (1 / sum_i m_i) * sum_i m_i * KL_l,i

    ``direction="student_teacher"`` (the default, the paper's formula): ``KL = sum_c p_s log(p_s / p_t)``.
    ``"teacher_student"``: ``KL = sum_c p_t log(p_t / p_s)``, which is what the authors' released code computes
    (``KLDivLoss(log_softmax(student), softmax(teacher))``, batch mean). The teacher is a fixed target (no gradient).

    Args:
      student_logits: ``[L, B, C]`` (one row per internal classifier; ``L`` may be 0).
      teacher_logits: ``[B, C]``.
      mask: optional ``[B]`` row mask; masked rows may hold garbage. No row -> 0.
    """
    if direction not in ("student_teacher", "teacher_student"):
        raise ValueError(f"direction must be 'student_teacher' or 'teacher_student', got {direction!r}")
    student_logits = jnp.asarray(student_logits)
    teacher_logits = jax.lax.stop_gradient(jnp.asarray(teacher_logits))
    dtype = jnp.promote_types(_float_dtype(student_logits), _float_dtype(teacher_logits))
    weights = _row_weights(mask, teacher_logits.shape[:-1], dtype)
    keep = (weights > 0)[..., None]
    log_s = jax.nn.log_softmax(jnp.where(keep[None], student_logits.astype(dtype), 0.0), axis=-1)
    log_t = jax.nn.log_softmax(jnp.where(keep, teacher_logits.astype(dtype), 0.0), axis=-1)[None]
    log_p, log_q = (log_s, log_t) if direction == "student_teacher" else (log_t, log_s)
    p = jnp.exp(log_p)
    kl = jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)  # [L, B]
    return jnp.sum(jax.vmap(lambda row: _masked_mean(row, weights))(kl))


def patient_loss(
    student_cls: jax.Array,
    teacher_cls: jax.Array,
    mask: jax.Array | None = None,
    eps: float = 1e-12,
) -> jax.Array:
    """BERT-PKD's patient loss (Sun et al., 2019): the L2-normalised [CLS] states of the student's layers
    against those of their mapped teacher layers, as the squared error averaged over the layers, the hidden units
    and the unmasked rows (the scale of the authors' ``F.mse_loss``, so that their tuned beta carries over)::

        PT = (1 / sum_i m_i) * sum_i m_i * (1 / (J H)) * sum_j || s_ji / |s_ji| - t_ji / |t_ji| ||^2

    (``|x|`` floored at ``eps``). The teacher is a fixed target (no gradient).

    Args:
      student_cls, teacher_cls: ``[J, B, H]`` (``J`` mapped layers; ``J = 0`` gives 0).
      mask: optional ``[B]`` row mask; masked rows may hold garbage.
    """
    student_cls = jnp.asarray(student_cls)
    teacher_cls = jax.lax.stop_gradient(jnp.asarray(teacher_cls))
    if student_cls.shape != teacher_cls.shape:
        raise ValueError(f"student_cls {student_cls.shape} and teacher_cls {teacher_cls.shape} differ in shape")
    dtype = jnp.promote_types(_float_dtype(student_cls), _float_dtype(teacher_cls))
    weights = _row_weights(mask, student_cls.shape[1:2], dtype)
    keep = (weights > 0)[None, :, None]

    def unit(x):
        x = jnp.where(keep, x.astype(dtype), 0.0)
        # max(|x|, eps) as sqrt(max(|x|^2, eps^2)): finite gradients at x = 0 (masked rows).
        return x / jnp.sqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))

    layers, hidden = student_cls.shape[0], student_cls.shape[2]
    per_row = jnp.sum((unit(student_cls) - unit(teacher_cls)) ** 2, axis=(0, 2)) / max(layers * hidden, 1)  # [B]
    return _masked_mean(per_row, weights)


# ----------------------------------------------------------------------------------------------------------------
# DAR


def gather_batch(axis_name, *arrays: jax.Array) -> tuple[jax.Array, ...]:
    """Concatenate per-device ``[b, ...]`` arrays over the mapped axis ``axis_name`` into global ``[n * b, ...]``.

    Uses ``jax.lax.all_gather(..., tiled=True)``, so device ``k``'s rows sit at ``[k * b, (k + 1) * b)``. The
    gather is differentiable: its transpose is a reduce-scatter, so when every device differentiates its own copy
    of a loss ``L`` computed on the global batch, device ``k`` receives ``n * dL/dx_k`` for its local rows. Averaging
    the parameter gradients over devices (``pmean``, the usual data-parallel step) then gives exactly the gradient
    of ``L``. (A trainer that ``psum``s gradients instead must divide such a loss by ``n``.) This scale is the same
    as that of a per-device mean loss such as :func:`cross_entropy`, so the two mix correctly in one objective under
    ``vmap``, ``pmap`` and ``jax.shard_map`` alike (under ``shard_map`` with replicated parameters both come out
    ``n`` times larger, since the gradient of a replicated input is already summed over devices).
    ``axis_name=None`` returns the arrays unchanged.
    """
    if axis_name is None:
        return tuple(arrays)
    return tuple(jax.lax.all_gather(a, axis_name, tiled=True) for a in arrays)


def _prepare_pairs(confidence, difficulty, mask, axis_name):
    """Shared DAR preamble: cast, default mask, gather over devices, sanitise masked rows.

    Returns ``(c, hard, valid)`` on the (global) batch: confidence in at least float32 with masked rows set to 0,
    a bool ``hard`` (difficulty > 0, no gradient) and a bool ``valid`` row mask.
    """
    confidence = jnp.asarray(confidence)
    confidence = confidence.astype(_float_dtype(confidence))
    difficulty = jax.lax.stop_gradient(jnp.asarray(difficulty))
    valid = jnp.ones(confidence.shape, bool) if mask is None else (jnp.asarray(mask) != 0)
    confidence, difficulty, valid = gather_batch(axis_name, confidence, difficulty, valid)
    c = jnp.where(valid, confidence, 0.0)
    hard = difficulty > 0
    return c, hard, valid


def _hinge_matrix(c: jax.Array, margin) -> jax.Array:
    """``H[i, j] = max(0, margin - (c_i - c_j))`` for every ordered pair (row ``i`` meant easy, column ``j`` hard)."""
    return jax.nn.relu(margin - (c[:, None] - c[None, :]))


def _easy_hard_pairs(hard: jax.Array, valid: jax.Array, dtype) -> jax.Array:
    """``P[i, j] = 1`` iff ``i`` is a valid easy and ``j`` a valid hard instance, as ``dtype``."""
    easy = valid & ~hard
    hard = valid & hard
    return (easy[:, None] & hard[None, :]).astype(dtype)


def dar_loss(
    confidence: jax.Array,
    difficulty: jax.Array,
    margin: float,
    mask: jax.Array | None = None,
    axis_name=None,
) -> jax.Array:
    """Difficulty-aware regulariser over all (easy, hard) pairs of the batch.

    With ``E`` the unmasked easy rows and ``H`` the unmasked hard rows::

        DAR = (1 / (|E| |H|)) * sum_{i in E} sum_{j in H} max(0, margin - (c_i - c_j)),

    computed as one masked ``B x B`` matrix. Pairs of equal difficulty carry no loss and do not enter the count.
    No (easy, hard) pair (all easy, all hard, a batch of one, everything masked) -> exactly 0 with zero gradient.
    Gradients flow into ``confidence`` only.

    Args:
      confidence: ``[B]`` max softmax probability (see :func:`confidence_from_logits`).
      difficulty: ``[B]`` 0 = easy, 1 = hard (any value > 0 counts as hard).
      margin: the confidence margin ``eps`` (paper: 0.3 or 0.5).
      mask: optional ``[B]`` row mask.
      axis_name: if given, pair over the global batch gathered over this mapped axis (see :func:`gather_batch`
        for the gradient convention); the value is the global-batch loss, the same on every device.
    """
    c, hard, valid = _prepare_pairs(confidence, difficulty, mask, axis_name)
    pairs = _easy_hard_pairs(hard, valid, c.dtype)
    return _masked_mean(_hinge_matrix(c, margin), pairs)


# ----------------------------------------------------------------------------------------------------------------
# registry of DAR variants


class DarVariant(Protocol):
    """The uniform signature of a registered DAR variant.

    ``fn(confidence, difficulty, mask, *, margin, rng, soft_difficulty=None, **options) -> scalar``

    * ``confidence``: ``[B]`` floating, at least float32; masked rows already replaced by 0.
    * ``difficulty``: ``[B]`` bool, True = hard (already ``> 0``-thresholded, no gradient).
    * ``mask``: ``[B]`` bool, True = row counts (never None).
    * ``margin``: the confidence margin ``eps``.
    * ``rng``: a ``jax.random`` key, or None; deterministic variants ignore it.
    * ``soft_difficulty``: ``[B]`` floating in ``[0, 1]`` (e.g. fraction of seeds wrong; no gradient), or None.
    * ``options``: variant-specific keyword hyper-parameters (e.g. ``tau`` for "logistic"), each with a default.

    The arrays cover the batch the variant should pair over: when a caller passes ``axis_name`` to the function
    :func:`get_dar_variant` returns, they are already gathered over devices, so a variant never handles
    collectives itself. It must return a scalar, be jittable, and return 0 (not NaN) when it has nothing to pair.
    """

    def __call__(self, confidence, difficulty, mask, *, margin, rng, soft_difficulty=None, **options): ...


_DAR_VARIANTS: dict[str, DarVariant] = {}


def register_dar_variant(name: str, fn: DarVariant | None = None, *, overwrite: bool = False):
    """Register a DAR variant under ``name``; use as ``@register_dar_variant("mine")`` or a plain call.

    ``fn`` must follow :class:`DarVariant`. Registering a taken name raises ``ValueError`` unless
    ``overwrite=True``. Returns ``fn`` unchanged (so the decorator leaves the function usable directly).
    """

    def decorator(f: DarVariant) -> DarVariant:
        if not overwrite and name in _DAR_VARIANTS:
            raise ValueError(f"DAR variant {name!r} is already registered; pass overwrite=True to replace it")
        _DAR_VARIANTS[name] = f
        return f

    if fn is None:
        return decorator
    return decorator(fn)


def dar_variant_names() -> tuple[str, ...]:
    """Names of the registered DAR variants, sorted."""
    return tuple(sorted(_DAR_VARIANTS))


def get_dar_variant(name: str) -> Callable[..., jax.Array]:
    """The DAR variant registered as ``name``, wrapped with the common preamble.

    Returns ``loss(confidence, difficulty, mask=None, *, margin, rng=None, soft_difficulty=None, axis_name=None,
    **options) -> scalar``, which casts ``confidence`` to at least float32, thresholds ``difficulty > 0``, stops
    gradients into both difficulties, fills a None mask, optionally gathers everything over ``axis_name`` (see
    :func:`gather_batch`; a random variant then needs the same ``rng`` on every device for the value to agree),
    zeroes masked rows, and calls the registered function. Unknown names raise ``KeyError`` listing the known ones.
    """
    try:
        fn = _DAR_VARIANTS[name]
    except KeyError:
        raise KeyError(f"unknown DAR variant {name!r}; registered: {', '.join(dar_variant_names())}") from None

    def loss(confidence, difficulty, mask=None, *, margin, rng=None, soft_difficulty=None, axis_name=None, **options):
        c, hard, valid = _prepare_pairs(confidence, difficulty, mask, axis_name)
        soft = None
        if soft_difficulty is not None:
            soft = jax.lax.stop_gradient(jnp.asarray(soft_difficulty)).astype(c.dtype)
            (soft,) = gather_batch(axis_name, soft)
            soft = jnp.where(valid, soft, 0.0)
        return fn(c, hard, valid, margin=margin, rng=rng, soft_difficulty=soft, **options)

    loss.__name__ = f"dar_{name}"
    loss.__doc__ = fn.__doc__
    return loss


@register_dar_variant("all_pairs")
def _all_pairs(confidence, difficulty, mask, *, margin, rng=None, soft_difficulty=None):
    """All (easy, hard) pairs, averaged over pairs: exactly :func:`dar_loss` (the default)."""
    pairs = _easy_hard_pairs(difficulty, mask, confidence.dtype)
    return _masked_mean(_hinge_matrix(confidence, margin), pairs)


@register_dar_variant("authors")
def _authors(confidence, difficulty, mask, *, margin, rng, soft_difficulty=None):
    """The authors' sampling: one random hard partner per easy instance.

    Each valid easy instance ``i`` draws a partner ``p(i)`` uniformly from the batch's valid hard instances (with
    replacement across ``i``, independently, from ``rng``), and::

        DAR = (1 / |E|) * sum_{i in E} max(0, margin - (c_i - c_{p(i)})),

    0 when there is no valid hard (or no valid easy) instance. The partners depend only on ``rng``, the batch size,
    ``difficulty`` and ``mask``, never on the confidences; gradients flow into both members of each sampled pair.
    Since every easy instance gets a partner whenever a hard one exists,
    ``E_rng[DAR] = (1/|E|) sum_i (1/|H|) sum_j hinge_ij``, which is exactly the all-pairs loss.
    """
    if rng is None:
        raise ValueError("the 'authors' DAR variant samples partners and needs an rng key")
    easy = mask & ~difficulty
    hard = mask & difficulty
    logits = jnp.where(hard, 0.0, -jnp.inf)
    partner = jax.random.categorical(rng, logits, shape=confidence.shape)
    weights = (easy & jnp.any(hard)).astype(confidence.dtype)
    hinge = jax.nn.relu(margin - (confidence - confidence[partner]))
    return _masked_mean(hinge, weights)


@register_dar_variant("logistic")
def _logistic(confidence, difficulty, mask, *, margin, rng=None, soft_difficulty=None, tau=0.1):
    """Smooth ranking loss: the hinge replaced by a scaled softplus, averaged over all (easy, hard) pairs.

    ``l_ij = tau * softplus((margin - (c_i - c_j)) / tau)`` for easy ``i``, hard ``j``. It is smooth, always
    positive, satisfies ``hinge <= l <= hinge + tau * log 2``, and tends to the hinge as ``tau -> 0``.
    """
    pairs = _easy_hard_pairs(difficulty, mask, confidence.dtype)
    z = margin - (confidence[:, None] - confidence[None, :])
    return _masked_mean(tau * jax.nn.softplus(z / tau), pairs)


@register_dar_variant("soft")
def _soft(confidence, difficulty, mask, *, margin, rng=None, soft_difficulty=None):
    """Soft difficulty: every ordered pair weighted by how much harder its second member is.

    With soft difficulties ``s`` in ``[0, 1]`` (e.g. the fraction of labelling seeds that got an instance wrong)::

        w_ij = max(0, s_j - s_i) * m_i * m_j,   DAR = sum_ij w_ij max(0, margin - (c_i - c_j)) / sum_ij w_ij,

    0 when all weights vanish. Without ``soft_difficulty`` the binary ``difficulty`` is used, and the loss equals
    "all_pairs" (then ``w_ij = 1`` exactly for easy ``i``, hard ``j``).
    """
    s = difficulty.astype(confidence.dtype) if soft_difficulty is None else soft_difficulty
    both = (mask[:, None] & mask[None, :]).astype(confidence.dtype)
    weights = jax.nn.relu(s[None, :] - s[:, None]) * both
    return _masked_mean(_hinge_matrix(confidence, margin), weights)
