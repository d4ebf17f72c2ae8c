"""A fully connected softmax classifier as a hand-written, hand-batched :class:`~sqn_ray.objective.Oracle`.

The net and its flat parameters
-------------------------------
``sizes = [p_0, p_1, ..., p_L]`` gives L layers. Layer l maps a_{l} (n × p_l) to

    z_l = a_l W_l + b_l,      W_l ∈ R^{p_l × p_{l+1}},  b_l ∈ R^{p_{l+1}},
    a_{l+1} = σ(z_l)  for hidden layers (l < L-1),     logits = z_{L-1}  (linear output),

with a_0 = X. The flat vector w lists, layer by layer, W_l row-major then b_l, so
d = Σ_l (p_l + 1) p_{l+1}. The loss is the mean softmax cross-entropy over the n points,

    F(w) = -(1/n) Σ_i log softmax(z_{L-1,i})[y_i].

Derivatives, written out (no autograd)
--------------------------------------
Backward (the gradient). With P = softmax(logits) and Y the one-hot labels:

    δ_{L-1} = (P − Y) / n,     ∇_{W_l} F = a_lᵀ δ_l,     ∇_{b_l} F = 1ᵀ δ_l,
    e_l = δ_{l+1} W_{l+1}ᵀ  (= ∂F/∂a_{l+1}),     δ_l = e_l ⊙ σ'(z_l).

Hessian-vector products by Pearlmutter's R-operator R{·} = d/dt (·)(w + t v)|_{t=0}, for the direction
v = (V_l, c_l)_l. Forward, with T_l := R{a_l} (T_0 = 0):

    R{z_l} = T_l W_l + a_l V_l + c_l,        T_{l+1} = σ'(z_l) ⊙ R{z_l}.

Backward, with U_l := R{δ_l}:

    U_{L-1} = (1/n) (P ⊙ R{z} − P ⊙ (P·R{z}))          (row-wise softmax Jacobian),
    R{∇_{W_l} F} = T_lᵀ δ_l + a_lᵀ U_l,     R{∇_{b_l} F} = 1ᵀ U_l,
    U_l = σ'(z_l) ⊙ (U_{l+1} W_{l+1}ᵀ + δ_{l+1} V_{l+1}ᵀ) + κ_l ⊙ T_{l+1},
    κ_l = e_l ⊙ σ''(z_l) / σ'(z_l),

and ∇²F(w) v = R{∇F}. The ratio σ''/σ' is written in terms of the activation a = σ(z) (1 − 2a for the
sigmoid, −2a for tanh, 0 for relu), so nothing is divided and a saturated unit (σ' = 0) is exact.

Batching
--------
All m directions travel together with the tangents laid out (n, m, q): point-major, direction, unit.
Then every product of a tangent with the *shared* weights, T W and U Wᵀ, is one (n·m × p)(p × q) GEMM,
and every product of the *shared* activations with the m directions, a [V_1 … V_m] and
δ [V_1ᵀ … V_mᵀ], is one (n × p)(p × m·q) GEMM, provided the m direction blocks sit side by side as
(p, m, q). That layout is not the flat (d, m) one, so one ``index_select`` with a precomputed index
permutes all of V at the start, and two more assemble the (d, m) result at the end; everything else is
GEMMs and fused elementwise ops, under ten torch calls per layer for any m. The bias rides along in the
GEMMs with the activations: the flat layout stores b_l right after the rows of W_l, so (W_l; b_l) is one
(p+1) × q block and [a_l, 1] (W_l; b_l) = a_l W_l + b_l. Option I gradients at m points
(:meth:`MLPOracle.grads`) use the same ideas: the first layer, whose input X is shared, is one GEMM over
all m parameter sets; the later layers, whose inputs differ per point, are one ``bmm``.

The state at the last point (activations, δ's) is cached, so ``hvps(w, V)`` right after
``loss_and_grad(w)`` (the sampled methods' pattern) skips the forward and backward pass. A point is
recognised by its storage address and version counter while the cache holds a reference to it, so an
in-place update of w (which bumps the version) is seen; changes made behind autograd's back (``.data``,
numpy views) are not: call :meth:`MLPOracle.clear_cache` after those.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACTIVATIONS = ("sigmoid", "tanh", "relu")


# ---------------------------------------------------------------------------------------------------
# Shapes and the plain (autograd) reference
# ---------------------------------------------------------------------------------------------------
def layer_shapes(sizes) -> list[tuple[int, int]]:
    """(p_l, p_{l+1}) for every layer of ``sizes``."""
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must list at least two positive layer widths, got {sizes}")
    return list(zip(sizes[:-1], sizes[1:]))


def param_count(sizes) -> int:
    """d = Σ_l (p_l + 1) p_{l+1}: every weight matrix and bias."""
    return sum((p + 1) * q for p, q in layer_shapes(sizes))


def _check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} is not one of {ACTIVATIONS}")
    return activation


_TORCH_ACTIVATION = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}


def mlp_logits(w: torch.Tensor, sizes, activation: str, X: torch.Tensor) -> torch.Tensor:
    """Logits z_{L-1} (n × p_L) of the net at flat parameters w, from plain torch ops.

    This is the autograd-differentiable (and vmappable) definition the hand-written oracle must match.
    """
    act = _TORCH_ACTIVATION[_check_activation(activation)]
    shapes = layer_shapes(sizes)
    a, i = X, 0
    for layer, (p, q) in enumerate(shapes):
        W = w[i:i + p * q].reshape(p, q)
        b = w[i + p * q:i + p * q + q]
        i += (p + 1) * q
        a = torch.addmm(b, a, W)
        if layer < len(shapes) - 1:
            a = act(a)
    return a


def plain_sigmoid_net_fun(sizes, X: torch.Tensor, labels: torch.Tensor):
    """``fun(w)``: a sigmoid net's mean cross-entropy written as a user writes it (slices of w into weight
    matrices, ``a @ W + b``, ``torch.sigmoid``, ``F.cross_entropy``; no fused ops, no hand-written derivatives),
    the case the generic oracle's benchmarks and tests measure. Same layout and F as :func:`mlp_loss`."""
    sizes = tuple(sizes)

    def fun(w: torch.Tensor) -> torch.Tensor:
        a, i = X, 0
        for layer, (p, q) in enumerate(zip(sizes[:-1], sizes[1:])):
            W = w[i:i + p * q].view(p, q)
            b = w[i + p * q:i + p * q + q]
            i += (p + 1) * q
            a = a @ W + b
            if layer < len(sizes) - 2:
                a = torch.sigmoid(a)
        return F.cross_entropy(a, labels)
    return fun


def mlp_loss(w: torch.Tensor, sizes, activation: str, X: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """F(w): mean softmax cross-entropy of :func:`mlp_logits` against integer ``labels``."""
    return F.cross_entropy(mlp_logits(w, sizes, activation, X), labels)


# ---------------------------------------------------------------------------------------------------
# Activation derivatives in terms of a = σ(z) (all the hand-written passes need)
# ---------------------------------------------------------------------------------------------------
def _activate(z: torch.Tensor, activation: str, out: torch.Tensor) -> torch.Tensor:
    """a = σ(z) into ``out`` (z may be ``out``: σ' and σ''/σ' are functions of a, z is not needed)."""
    if activation == "sigmoid":
        return torch.sigmoid(z, out=out)
    if activation == "tanh":
        return torch.tanh(z, out=out)
    return torch.clamp_min(z, 0, out=out)


def _slope(a: torch.Tensor, activation: str, one: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """σ'(z) from a = σ(z): a(1 − a) (sigmoid), 1 − a² (tanh), 1[a > 0] (relu), one torch call each."""
    if activation == "sigmoid":
        return torch.addcmul(a, a, a, value=-1, out=out)
    if activation == "tanh":
        return torch.addcmul(one, a, a, value=-1, out=out)
    return torch.sign(a, out=out)  # a = max(z, 0) ≥ 0: sign(a) = 1[z > 0], as autograd's relu backward uses


def _curvature(e: torch.Tensor, a: torch.Tensor, activation: str, zero: torch.Tensor) -> torch.Tensor | None:
    """κ = e ⊙ σ''(z)/σ'(z) from a = σ(z): e(1 − 2a) (sigmoid), −2ea (tanh); None for relu (σ'' = 0)."""
    if activation == "sigmoid":
        return torch.addcmul(e, e, a, value=-2)
    if activation == "tanh":
        return torch.addcmul(zero, e, a, value=-2)
    return None


# ---------------------------------------------------------------------------------------------------
# Index plans: where each (layer block × column) entry of a (d, m) matrix sits in a batched layout
# ---------------------------------------------------------------------------------------------------
def _block_index(offset: int, p: int, q: int, m: int, order: str) -> torch.Tensor:
    """Flat indices into a row-major (d, m) matrix of the block rows offset + i·q + j (i < p, j < q),
    for every column k < m, arranged with the axes in ``order`` (a permutation of "ijk").

    E.g. order "ikj" gives the (p, m, q) layout in which the m blocks W_k sit side by side.
    """
    i = torch.arange(p).view(p, 1, 1)
    j = torch.arange(q).view(1, q, 1)
    k = torch.arange(m).view(1, 1, m)
    idx = (offset + i * q + j) * m + k  # axes (i, j, k)
    return idx.permute(["ijk".index(c) for c in order]).reshape(-1)


def _inverse(regions: list[torch.Tensor], total: int, fill: int, base: int = 0) -> torch.Tensor:
    """For a flat buffer made of ``regions`` (each listing the (d, m) flat index of its entries), starting
    at position ``base``, the buffer position of every (d, m) entry; entries no region covers get ``fill``."""
    inv = torch.full((total,), fill, dtype=torch.long)
    for idx in regions:
        inv[idx] = torch.arange(base, base + idx.numel())
        base += idx.numel()
    return inv


def _rows_and_3d(buf: torch.Tensor, n: int, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views (n·m, q) and (n, m, q) of an (n, m·q) tangent buffer."""
    q = buf.shape[1] // m
    return buf.view(n * m, q), buf.view(n, m, q)


class _HvpWork:
    """Index plan, buffers and views of the batched R-operator pass for m directions.

    Allocated once per m and reused: on the toy nets a fresh buffer of a few hundred KB per call costs
    page faults (glibc returns such blocks to the OS on free) that outweigh the arithmetic.

    The bias row of a layer follows its weight rows in the flat layout, so with ã_l = [a_l, 1] the pair
    (V_l; c_l) is one (p+1, q) block per direction: ã_l [(V;c)_1 … (V;c)_m] gives a_l V_l + c_l and
    ã_lᵀ U_l gives (a_lᵀ U_l; 1ᵀ U_l), one GEMM each.

    Gathered directions: per layer (V_l; c_l) as (p+1, m·q) and, for layers ≥ 1, V_lᵀ as (q, m·p).
    Result buffer: per layer ã_lᵀU_l as (p+1, m·q), then, for layers ≥ 1, T_lᵀδ_l as (m·p, q), then one 0.
    ∇²F V = acc[dst_main] + acc[dst_extra] (dst_extra points at the 0 where there is no T-term).
    """

    def __init__(self, shapes, offsets, n: int, m: int, d: int, dtype, device):
        kw = {"dtype": dtype, "device": device}
        src, main, extra = [], [], []
        for layer, ((p, q), o) in enumerate(zip(shapes, offsets)):
            Wb = _block_index(o, p + 1, q, m, "ikj")
            src.append(Wb)
            main.append(Wb)
            if layer > 0:
                src.append(_block_index(o, p, q, m, "jki"))
                extra.append(_block_index(o, p, q, m, "kij"))
        n_main = sum(r.numel() for r in main)
        n_acc = n_main + sum(r.numel() for r in extra)
        self.src = torch.cat(src).to(device)
        self.dst_main = _inverse(main, d * m, n_acc).to(device)
        self.dst_extra = _inverse(extra, d * m, n_acc, base=n_main).to(device)
        self.vg = torch.empty(self.src.numel(), **kw)
        self.acc = torch.zeros(n_acc + 1, **kw)  # every region is overwritten per call; the last 0 never
        self.second = torch.empty(d * m, **kw)
        vb = iter(self.vg.split([s.numel() for s in src]))
        ab = iter(self.acc[:n_main].split([r.numel() for r in main]))
        eb = iter(self.acc[n_main:n_acc].split([r.numel() for r in extra]))
        self.Vb, self.Vt, self.aU, self.Td = [], [None], [], [None]
        for layer, (p, q) in enumerate(shapes):
            self.Vb.append(next(vb).view(p + 1, m * q))
            self.aU.append(next(ab).view(p + 1, m * q))
            if layer > 0:
                self.Vt.append(next(vb).view(q, m * p))
                self.Td.append(next(eb).view(m * p, q))
        # rz[l]: R{z_l}, turned in place into T_{l+1} = R{a_{l+1}}; u[l]: U_l = R{δ_l}. Both (n, m·q_l).
        self.rz = [torch.empty(n, m * q, **kw) for _, q in shapes]
        self.u = [torch.empty(n, m * q, **kw) for _, q in shapes]
        self.rz_rows, self.rz3 = zip(*(_rows_and_3d(b, n, m) for b in self.rz))
        self.u_rows, self.u3 = zip(*(_rows_and_3d(b, n, m) for b in self.u))
        self.rzT = [None] + [b.T for b in self.rz[:-1]]  # T_lᵀ as (m·p_l, n) for layer l ≥ 1


class _GradsWork:
    """Index plan, buffers and views of the batched Option I pass at m points.

    Gathered points (and, in the same layout, the result): layer 0 as (W; b) (p+1, m·q), for one GEMM
    X̃ [(W;b)_1 … (W;b)_m] with the shared X̃ = [X, 1]; layers ≥ 1 as W (m, p, q) and b (m, 1, q), for one
    bmm over the points. Activations of layers ≥ 1 are (m, n, q).
    """

    def __init__(self, shapes, offsets, n: int, m: int, d: int, dtype, device):
        kw = {"dtype": dtype, "device": device}
        src = []
        for layer, ((p, q), o) in enumerate(zip(shapes, offsets)):
            if layer == 0:
                src.append(_block_index(o, p + 1, q, m, "ikj"))
            else:
                src += [_block_index(o, p, q, m, "kij"), _block_index(o + p * q, 1, q, m, "kij")]
        sizes = [s.numel() for s in src]
        self.src = torch.cat(src).to(device)
        self.dst = _inverse(src, d * m, 0).to(device)
        self.wg = torch.empty(self.src.numel(), **kw)
        self.acc = torch.empty(self.src.numel(), **kw)
        wb, ab = self.wg.split(sizes), self.acc.split(sizes)
        (p0, q0), L = shapes[0], len(shapes)
        self.W = [wb[0].view(p0 + 1, m * q0)] + [wb[2 * l - 1].view(m, p, q) for l, (p, q) in enumerate(shapes) if l]
        self.b = [None] + [wb[2 * l].view(m, 1, q) for l, (p, q) in enumerate(shapes) if l]
        self.WT = [None] + [W.transpose(1, 2) for W in self.W[1:]]
        self.gW = [ab[0].view(p0 + 1, m * q0)] + [ab[2 * l - 1].view(m, p, q) for l, (p, q) in enumerate(shapes) if l]
        self.gb = [None] + [ab[2 * l].view(m, q) for l, (p, q) in enumerate(shapes) if l]
        self.z0 = torch.empty(n, m * q0, **kw)
        self.h = [None, self.z0.view(n, m, q0).transpose(0, 1)]  # a_l as (m, n, p_l); a_1 is a view of z0
        self.h += [torch.empty(m, n, q, **kw) for _, q in shapes[1:]]  # a_2 … a_{L-1}, then the logits
        self.delta = torch.empty(m, n, shapes[-1][1], **kw)
        self.e = [None] + [torch.empty(m, n, p, **kw) for p, _ in shapes[1:]]
        self.slope = [None] + [torch.empty(m, n, p, **kw) for p, _ in shapes[1:]]
        self.D = torch.empty(n, m * q0, **kw)  # δ_0 in the (n, m, q) layout of the shared-X GEMM
        self.D_mnq = self.D.view(n, m, q0).transpose(0, 1)
        self.L = L


# ---------------------------------------------------------------------------------------------------
# The oracle
# ---------------------------------------------------------------------------------------------------
class _State:
    """Everything computed at one point w, filled in as it is needed (forward, backward, gradient)."""
    __slots__ = ("key", "w", "Wbs", "Ws", "a_aug", "a", "logits", "log_p", "loss", "p", "deltas", "es",
                 "slopes", "hvp_constants")

    def __init__(self, key, w):
        self.key, self.w = key, w  # holding w pins its storage, so its address cannot be reused
        self.deltas = self.hvp_constants = None


class MLPOracle:
    """Exact loss, gradient, Hessian-vector products and per-point gradients of a softmax MLP.

    Parameters
    ----------
    sizes : layer widths [p_0, …, p_L] (p_0 = input features, p_L = classes).
    activation : "sigmoid", "tanh" or "relu" on the hidden layers; the output layer is linear.
    X : (n, p_0) inputs. labels : (n,) integer classes in [0, p_L).
    dtype, device : of the oracle's data and of the w it accepts.
    cache : keep the state at the last point (see the module docstring).

    Not thread-safe: the batched passes reuse preallocated buffers (one set per kind, for the last m).
    """

    def __init__(self, sizes, activation: str, X: torch.Tensor, labels: torch.Tensor,
                 dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu", *, cache: bool = True):
        self.sizes = tuple(int(s) for s in sizes)
        self.shapes = layer_shapes(self.sizes)
        self.activation = _check_activation(activation)
        self.dim = param_count(self.sizes)
        self.dtype = dtype
        self.device = torch.device(device)
        self.X = torch.as_tensor(X).to(dtype=dtype, device=self.device).contiguous()
        self.labels = torch.as_tensor(labels).to(dtype=torch.long, device=self.device)
        n, p0 = self.X.shape
        if p0 != self.sizes[0] or self.labels.shape != (n,):
            raise ValueError(f"X must be (n, {self.sizes[0]}) and labels (n,), got {tuple(self.X.shape)} "
                             f"and {tuple(self.labels.shape)}")
        if n and not (0 <= int(self.labels.min()) and int(self.labels.max()) < self.sizes[-1]):
            raise ValueError(f"labels must lie in [0, {self.sizes[-1]}), got range "
                             f"[{int(self.labels.min())}, {int(self.labels.max())}]")
        self.n = n
        self.cache = cache
        # −Y/n: the loss is ⟨log P, −Y/n⟩ and δ_{L-1} = P/n + (−Y/n), one fused call each.
        self._neg_y_n = -F.one_hot(self.labels, self.sizes[-1]).to(dtype) / n
        self._neg_y_n_flat = self._neg_y_n.reshape(-1)
        self._one = torch.ones((), dtype=dtype, device=self.device)
        self._zero = torch.zeros((), dtype=dtype, device=self.device)
        self._offsets = []
        o = 0
        for p, q in self.shapes:
            self._offsets.append(o)
            o += (p + 1) * q
        self._split = tuple((p + 1) * q for p, q in self.shapes)  # the (W_l; b_l) blocks of w
        # X̃ = [X, 1] (and ã_l = [a_l, 1] below): the bias rides along in every GEMM with the activations.
        self.X_aug = torch.cat([self.X, torch.ones(n, 1, dtype=dtype, device=self.device)], dim=1)
        self._aug_widths = [p + 1 for p, _ in self.shapes[1:]]
        self._state: _State | None = None
        self._work: dict[type, tuple[int, object]] = {}

    # -- public API ----------------------------------------------------------------------------------
    def loss(self, w: torch.Tensor) -> torch.Tensor:
        """F(w) (0-dim tensor)."""
        return self._forward(w).loss.clone()  # a copy: the cached state must not change under the caller

    def loss_and_grad(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(F(w), ∇F(w)) by one forward and one backward pass (a fresh gradient tensor every call)."""
        st = self._forward(w)
        self._backward(st)
        return st.loss.clone(), self._gradient(st)

    def logits(self, w: torch.Tensor) -> torch.Tensor:
        """(n, classes) output of the net at w."""
        return self._forward(w).logits.clone()  # a copy: the cached state must not change under the caller

    def accuracy(self, w: torch.Tensor) -> float:
        """Fraction of points whose largest logit is their label."""
        return float((self._forward(w).logits.argmax(1) == self.labels).to(torch.float64).mean())

    def hvps(self, w: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """∇²F(w) V for V of shape (d, m) (or (d,)), all m products in one batched R-operator pass."""
        if V.dim() == 1:
            return self.hvps(w, V.unsqueeze(1)).squeeze(1)
        self._check_block(V, "V")
        m = V.shape[1]
        if m == 0:
            return V.new_zeros(self.dim, 0)
        st = self._forward(w)
        self._backward(st)
        return self._hvps(st, V.detach(), self._workspace(_HvpWork, m))

    def grads(self, W: torch.Tensor) -> torch.Tensor:
        """∇F at every column of W (d, m); returns (d, m). One batched forward/backward for all m."""
        if W.dim() == 1:
            return self.loss_and_grad(W)[1]
        self._check_block(W, "W")
        m = W.shape[1]
        if m == 0:
            return W.new_zeros(self.dim, 0)
        return self._grads(W.detach(), self._workspace(_GradsWork, m))

    def _check_block(self, V: torch.Tensor, name: str) -> None:
        # the gather indices assume exactly d rows: a wrong shape must fail, not read the wrong entries
        if V.dim() != 2 or V.shape[0] != self.dim or V.dtype != self.dtype:
            raise ValueError(f"{name} must be a ({self.dim}, m) {self.dtype} tensor, got {tuple(V.shape)} {V.dtype}")

    def clear_cache(self) -> None:
        """Forget the cached point state and free the batched buffers. Needed only after changing w in a
        way its version counter does not see (through ``.data`` or a numpy view)."""
        self._state = None
        self._work.clear()

    # -- the point state -----------------------------------------------------------------------------
    def _forward(self, w: torch.Tensor) -> _State:
        """Forward pass at w, or the cached state if w is (still) the last point."""
        w = w.detach()
        # data_ptr + version identify the contents while the cached state pins w's storage.
        try:
            key = (w.data_ptr(), w._version, w.shape, w.stride(), w.dtype, w.device)
        except RuntimeError:  # an inference-mode tensor has no version counter: never cache it
            key = None
        st = self._state
        if st is not None and key is not None and st.key == key:
            return st
        if w.shape != (self.dim,) or w.dtype != self.dtype:
            raise ValueError(f"w must be a ({self.dim},) {self.dtype} tensor, got {tuple(w.shape)} {w.dtype}")
        st = _State(key, w)
        flat = w.contiguous()  # e.g. a column of a (d, m) matrix; the blocks below must be views
        st.Wbs = [c.view(p + 1, q) for c, (p, q) in zip(flat.split(self._split), self.shapes)]
        st.Ws = [Wb[:-1] for Wb in st.Wbs]
        # one buffer for all hidden ã_l = [a_l, 1]; the activations are written into its column slices
        hidden = torch.ones(self.n, sum(self._aug_widths), dtype=self.dtype, device=self.device)
        st.a_aug = [self.X_aug, *hidden.split(self._aug_widths, dim=1)]
        st.a = [self.X] + [t[:, :-1] for t in st.a_aug[1:]]
        for l in range(len(self.shapes) - 1):
            _activate(torch.mm(st.a_aug[l], st.Wbs[l]), self.activation, out=st.a[l + 1])
        st.logits = torch.mm(st.a_aug[-1], st.Wbs[-1])
        st.log_p = torch.log_softmax(st.logits, 1)
        st.loss = torch.dot(st.log_p.view(-1), self._neg_y_n_flat)
        if self.cache and key is not None:
            self._state = st
        return st

    def _backward(self, st: _State) -> None:
        """δ_l, e_l and σ'(z_l) of every layer (the gradient's backward pass without its GEMMs)."""
        if st.deltas is not None:
            return
        st.p = st.log_p.exp()
        delta = torch.add(self._neg_y_n, st.p, alpha=1.0 / self.n)
        deltas, es, slopes = [delta], [], []
        for l in range(len(self.shapes) - 1, 0, -1):
            e = torch.mm(delta, st.Ws[l].T)
            s = _slope(st.a[l], self.activation, self._one)
            delta = e * s
            deltas.append(delta)
            es.append(e)
            slopes.append(s)
        st.deltas, st.es, st.slopes = deltas[::-1], es[::-1], slopes[::-1]  # index l: layer l (es: l < L-1)

    def _gradient(self, st: _State) -> torch.Tensor:
        """(∇_{W_l} F; ∇_{b_l} F) = ã_lᵀ δ_l = (a_lᵀ δ_l; 1ᵀ δ_l), written straight into the flat gradient."""
        g = torch.empty(self.dim, dtype=self.dtype, device=self.device)
        for l, (chunk, (p, q)) in enumerate(zip(g.split(self._split), self.shapes)):
            torch.mm(st.a_aug[l].T, st.deltas[l], out=chunk.view(p + 1, q))
        return g

    def _workspace(self, kind: type, m: int):
        """The buffers of ``kind`` for m (only the last m of each kind is kept, to bound memory)."""
        held = self._work.get(kind)
        if held is None or held[0] != m:
            held = self._work[kind] = (m, kind(self.shapes, self._offsets, self.n, m, self.dim, self.dtype,
                                              self.device))
        return held[1]

    # -- Option II: batched R-operator -----------------------------------------------------------------
    def _hvp_constants(self, st: _State):
        """σ'_l, κ_l, P and P/n shaped (n, 1, ·) to broadcast over the m directions (once per point)."""
        if st.hvp_constants is None:
            L = len(self.shapes)
            kappas = (_curvature(st.es[l], st.a[l + 1], self.activation, self._zero) for l in range(L - 1))
            p = st.p.unsqueeze(1)
            st.hvp_constants = ([s.unsqueeze(1) for s in st.slopes],
                                [None if k is None else k.unsqueeze(1) for k in kappas],
                                p, p * (1.0 / self.n), [a.T for a in st.a_aug], [W.T for W in st.Ws])
        return st.hvp_constants

    def _hvps(self, st: _State, V: torch.Tensor, wk: _HvpWork) -> torch.Tensor:
        L = len(self.shapes)
        slopes, kappas, p_u, pn_u, aT, WT = self._hvp_constants(st)
        torch.index_select(V.reshape(-1), 0, wk.src, out=wk.vg)  # all (V_l; c_l) and V_lᵀ blocks at once
        # (The tall (n·m × p)(p × q) product goes first and the wide one accumulates onto it: measured
        # faster than the other order, by up to a third in float32.)
        for l in range(L):
            if l == 0:
                torch.mm(st.a_aug[0], wk.Vb[0], out=wk.rz[0])  # a_0 V_0 + c_0 for all m: one GEMM
            else:
                torch.mm(wk.rz_rows[l - 1], st.Ws[l], out=wk.rz_rows[l])  # T_l W_l
                wk.rz[l].addmm_(st.a_aug[l], wk.Vb[l])  # + a_l V_l + c_l
            if l < L - 1:
                wk.rz3[l].mul_(slopes[l])  # T_{l+1} = σ'(z_l) ⊙ R{z_l}
        # softmax Jacobian, row by row: U = (P ⊙ Rz − P (P·Rz)) / n
        U = torch.mul(wk.rz3[L - 1], pn_u, out=wk.u3[L - 1])
        U.addcmul_(p_u, U.sum(2, keepdim=True), value=-1)
        for l in range(L - 1, -1, -1):
            torch.mm(aT[l], wk.u[l], out=wk.aU[l])  # (a_lᵀ U_l; 1ᵀ U_l)
            if l == 0:
                break
            torch.mm(wk.rzT[l], st.deltas[l], out=wk.Td[l])  # T_lᵀ δ_l
            torch.mm(wk.u_rows[l], WT[l], out=wk.u_rows[l - 1])  # U_l W_lᵀ
            wk.u[l - 1].addmm_(st.deltas[l], wk.Vt[l])  # + δ_l V_lᵀ
            wk.u3[l - 1].mul_(slopes[l - 1])
            if kappas[l - 1] is not None:
                wk.u3[l - 1].addcmul_(kappas[l - 1], wk.rz3[l - 1])  # + κ_{l-1} ⊙ T_l
        HV = torch.index_select(wk.acc, 0, wk.dst_main)
        HV.add_(torch.index_select(wk.acc, 0, wk.dst_extra, out=wk.second))
        return HV.view(self.dim, -1)

    # -- Option I: gradients at m points ---------------------------------------------------------------
    def _grads(self, W: torch.Tensor, wk: _GradsWork) -> torch.Tensor:
        act, L = self.activation, wk.L
        torch.index_select(W.reshape(-1), 0, wk.src, out=wk.wg)
        torch.mm(self.X_aug, wk.W[0], out=wk.z0)  # X [W_1 … W_m] + [b_1 … b_m], one GEMM
        if L > 1:
            _activate(wk.z0, act, out=wk.z0)
        for l in range(1, L):
            torch.baddbmm(wk.b[l], wk.h[l], wk.W[l], out=wk.h[l + 1])
            if l < L - 1:
                _activate(wk.h[l + 1], act, out=wk.h[l + 1])
        delta = torch.add(self._neg_y_n, torch.softmax(wk.h[L], 2), alpha=1.0 / self.n, out=wk.delta)
        for l in range(L - 1, 0, -1):
            torch.bmm(wk.h[l].transpose(1, 2), delta, out=wk.gW[l])  # a_lᵀ δ_l per point
            torch.sum(delta, 1, out=wk.gb[l])
            torch.bmm(delta, wk.WT[l], out=wk.e[l])
            s = _slope(wk.h[l], act, self._one, out=wk.slope[l])
            delta = torch.mul(wk.e[l], s, out=wk.D_mnq if l == 1 else wk.e[l])
        if L == 1:
            wk.D_mnq.copy_(delta)
        torch.mm(self.X_aug.T, wk.D, out=wk.gW[0])  # X̃ᵀ [δ_1 … δ_m], one GEMM
        return torch.index_select(wk.acc, 0, wk.dst).view(self.dim, -1)
