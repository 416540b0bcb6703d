"""`eden`: EDEN's b-bit quantiser after a random rotation, one scale a block (EDEN).

Vargaftik et al. (ICML 2022), "EDEN: Communication-Efficient and Robust Distributed
Mean Estimation for Federated Learning". DRIVE (drive.py) at any bit budget. Each
client rotates its update (rotation.py), so that each block's coordinates z look like
draws of N(0, ||z||^2 / B); it sends, for every coordinate, the index of its nearest
Lloyd-Max level for N(0, 1) at b bits (the level q nearest z sqrt(B) / ||z||), and one
float32 scale S a block. The server returns R^T (S q). With S = ||z||^2 / <z, q> (the
paper's, `unbiased: true`) the estimate is unbiased: E[R^T | Rx = z] maps z back to x,
and <z, S q> = ||z||^2 makes the projection exact. With S = <z, q> / ||q||^2
(`unbiased: false`, DRIVE's minimum-error scale) the error is smallest. At 1 bit both
are exactly DRIVE's. The levels are the converged Lloyd-Max tables of the authors'
later library (amitport/distributed-mean-estimation, opt_centroids_mpf.npz); for large
blocks the normalised error is 1/eps_b - 1 unbiased and 1 - eps_b biased, eps_b =
E[Z Q_b(Z)] (`eps`): 0.5708, 0.1331, 0.0358, 0.0096 unbiased for b = 1..4.

Budgets. An integer b in 1..8 uses the b-bit levels. A fractional b > 1 sends a
fixed count of the rotated coordinates, in chunks of 32 spread evenly over the
tensor, at ceil(b) bits and the rest at floor(b) (the authors draw the split from
the seed; a fixed count keeps the message's shape static, and an even spread keeps
every block's mix at b: the estimate is unbiased whatever the positions). b < 1 is
1-bit EDEN on a shared-seed random fraction b of the coordinates, scaled by 1/b
(subsampled.py), unbiased only (the minimum-error scale would err as much as
sending 0). The rotation is regenerated on the server from the client's seed:

    b >= 1: bits = 32 * ceil(d' * b / 32) + 32 * blocks + 32 (seed),  d' = d padded to blocks
    b < 1:  the same with b = 1 for the m = 32 * round(b * ceil(d / 32)) coordinates kept

about 2.009 bits a coordinate on the CNN at b = 2.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass

import numpy as np

from federated_research.compression.bitpack import pack, packed_words, unpack
from federated_research.compression.codec import Codec
from federated_research.compression.method import Method
from federated_research.compression.rotated_quantize import check_block_size
from federated_research.compression.rotation import BlockRotation
from federated_research.compression.subsampled import CHUNK, SubsampledCodec
from federated_research.lazy import tf
from federated_research.options import require

MAX_BITS = 8


def levels(bits: int) -> tuple[np.ndarray, np.ndarray]:
    """The 2**bits Lloyd-Max levels for N(0, 1), ascending, and the 2**bits - 1
    boundaries between them (midpoints: each value goes to its nearest level)."""
    half = np.array(HALF_CENTROIDS[bits])
    values = np.concatenate([-half[::-1], half])
    return values, (values[1:] + values[:-1]) / 2


def eps(bits: int) -> float:
    """E[Z Q_b(Z)], Z ~ N(0, 1): the large-block error is 1/eps - 1 unbiased, 1 - eps biased."""
    values, bounds = levels(bits)
    edges = [-math.inf, *bounds, math.inf]
    # E[Z; a < Z < b] = pdf(a) - pdf(b)
    pdf = [math.exp(-t * t / 2) / math.sqrt(2 * math.pi) for t in edges]
    return float(sum(v * (pdf[i] - pdf[i + 1]) for i, v in enumerate(values)))


def quantize(y: tf.Tensor, bits: int) -> tf.Tensor:
    """Each value's nearest level, as its index in `levels(bits)` (int32). The levels
    are symmetric: the sign picks the side and the magnitude one of the 2**(bits-1)
    positive levels, by a few comparisons up to 3 bits (3x faster than a binary
    search over the CNN's kernel), by a binary search above."""
    half = np.array(HALF_CENTROIDS[bits], np.float32)
    bounds = (half[1:] + half[:-1]) / 2
    size = tf.abs(y)
    if len(half) <= 4:
        rank = tf.add_n([tf.zeros_like(y, tf.int32)] + [
            tf.cast(size >= t, tf.int32) for t in bounds])
    else:
        rank = tf.raw_ops.Bucketize(input=size, boundaries=bounds.tolist())
    return tf.where(y >= 0, len(half) + rank, len(half) - 1 - rank)


def dequantize(codes: tf.Tensor, bits: int) -> tf.Tensor:
    """The levels of `quantize`'s indices (float32)."""
    half = np.array(HALF_CENTROIDS[bits], np.float32)
    positive = codes >= len(half)
    rank = tf.where(positive, codes - len(half), len(half) - 1 - codes)
    if len(half) <= 4:
        size = tf.add_n([tf.fill(tf.shape(codes), half[0])] + [
            tf.cast(rank >= i, tf.float32) * (half[i] - half[i - 1])
            for i in range(1, len(half))])
    else:
        size = tf.gather(tf.constant(half), rank)
    return tf.where(positive, size, -size)


class EdenCodec(Codec):
    needs_seed = True

    def __init__(self, shape, bits: float, block_size: int, unbiased: bool) -> None:
        super().__init__(shape)
        self.rotation = BlockRotation(self.size, block_size, bits=bits, scalars=1)
        self.unbiased = unbiased
        low, padded = math.floor(bits), self.rotation.padded
        # (width, chunks of 32 rotated coordinates at that width): the extra bit goes to
        # as many coordinates as fill the last word of a d' * b-bit message, spread evenly
        high = 32 * math.ceil(padded * bits / 32) - padded * low if bits > low else 0
        chunks = padded // CHUNK
        spread = np.unique(np.arange(high // CHUNK) * chunks // max(high // CHUNK, 1))
        rest = np.setdiff1d(np.arange(chunks), spread)
        self.streams = [(w, c) for w, c in ((low + 1, spread), (low, rest)) if len(c)]
        self._order = np.argsort(np.concatenate([c for _, c in self.streams]))

    def _split(self, y: tf.Tensor) -> list[tf.Tensor]:
        """[blocks, block] -> each stream's coordinates, flat."""
        if len(self.streams) == 1:  # every chunk, in order
            return [tf.reshape(y, [-1])]
        chunks = tf.reshape(y, [-1, CHUNK])
        return [tf.reshape(tf.gather(chunks, c), [-1]) for _, c in self.streams]

    def _join(self, parts: list[tf.Tensor]) -> tf.Tensor:
        """The inverse of `_split`."""
        if len(parts) > 1:
            chunks = tf.concat([tf.reshape(p, [-1, CHUNK]) for p in parts], axis=0)
            parts = [tf.gather(chunks, self._order)]
        return tf.reshape(parts[0], [self.rotation.blocks, self.rotation.block])

    def encode(self, x, seed):
        z = self.rotation.forward(x, seed)
        norm = tf.norm(z, axis=1, keepdims=True)
        y = tf.math.divide_no_nan(z * math.sqrt(self.rotation.block), norm)  # ~ N(0, 1)
        codes = [quantize(part, w) for (w, _), part in zip(self.streams, self._split(y),
                                                           strict=True)]
        q = self._values(codes)
        dot = tf.reduce_sum(z * q, axis=1)
        scale = (tf.math.divide_no_nan(tf.reduce_sum(tf.square(z), axis=1), dot)
                 if self.unbiased else
                 tf.math.divide_no_nan(dot, tf.reduce_sum(tf.square(q), axis=1)))
        message = collections.OrderedDict(
            (f"codes{w}", pack(c, w)) for (w, _), c in zip(self.streams, codes, strict=True))
        message["scales"] = scale
        return message

    def _values(self, codes: list[tf.Tensor]) -> tf.Tensor:
        return self._join([dequantize(c, w) for (w, _), c in zip(self.streams, codes,
                                                                 strict=True)])

    def decode(self, message, seed):
        codes = [unpack(message[f"codes{w}"], w, len(c) * CHUNK) for w, c in self.streams]
        return self.rotation.inverse(self._values(codes) * message["scales"][:, None], seed)

    def bits(self) -> int:
        return sum(32 * packed_words(len(c) * CHUNK, w) for w, c in self.streams) + \
            32 * self.rotation.blocks


@dataclass
class Eden(Method):
    bits: float = 2.0        # bits a coordinate, in (0, 8]: see the module's docstring
    block_size: int = 4096   # the largest rotation block; smaller ones where that sends less
    unbiased: bool = True    # the paper's unbiased scale; false = the minimum-error scale

    def check(self) -> None:
        super().check()
        require(0 < self.bits <= MAX_BITS, "bits", self.bits,
                f"is the bits a coordinate: more than 0, at most {MAX_BITS}", 2)
        # Below 1 bit the kept coordinates are scaled by 1/b, which undoes the shrinking
        # that makes the minimum-error scale worth having: its error is that of sending 0.
        require(self.unbiased or self.bits >= 1, "unbiased", self.unbiased,
                "below 1 bit the minimum-error scale errs as much as sending nothing "
                "(normalised error 1)", "true")
        check_block_size(self.block_size)

    def make_codec(self, shape):
        if self.bits < 1:  # 1-bit EDEN on a shared-seed random fraction `bits`
            return SubsampledCodec(shape, self.bits, lambda kept: EdenCodec(
                kept, 1, self.block_size, self.unbiased))
        return EdenCodec(shape, self.bits, self.block_size, self.unbiased)


HALF_CENTROIDS = {  # b: the 2**(b-1) positive Lloyd-Max levels for N(0, 1), ascending
    1: (0.7978845608028654,),
    2: (0.452780034636492, 1.5104176084990955),
    3: (0.24509417894422167, 0.7560052812058773, 1.343909278505, 2.1519457045369874),
    4: (
        0.128395029851147, 0.3880482994902902, 0.6567591185324634, 0.9423404564869614,
        1.2562311973471771, 1.6180463860218826, 2.0690172265313866, 2.732589570995163),
    5: (
        0.06588965977082256, 0.19805182966943216, 0.3313783057601116, 0.46669952297668094,
        0.6049336240094318, 0.7471357036878163, 0.8945651173883715, 1.0487833199231986,
        1.211804380609264, 1.3863403395866256, 1.5762280786121903, 1.7872332177032693,
        2.028728399395497, 2.317739404194735, 2.6911195773766687, 3.2607324934014006),
    6: (
        0.03340950637010074, 0.10027828930388713, 0.16729690336899547, 0.2345669853360093,
        0.302192846371696, 0.370282645258938, 0.4389496716586352, 0.5083137808979938,
        0.5785030305188004, 0.6496555810635404, 0.7219219405696736, 0.7954676558408593,
        0.870476586544118, 0.9471549447432923, 1.0257363490773348, 1.1064882395373279,
        1.1897201418608732, 1.2757944864337445, 1.3651410198102165, 1.4582763746978018,
        1.5558312247051407, 1.6585889004238565, 1.767541882991204, 1.8839772405224506,
        2.0096110425936944, 2.1468102170558803, 2.2989812097603872, 2.4713047976182803,
        2.672273835255278, 2.917406790723003, 3.240437055012211, 3.744101270895345),
    7: (
        0.016828169457257337, 0.05049086396324786, 0.08417264205883766, 0.1178862823031159,
        0.15164464790978896, 0.1854607214256451, 0.21934764023847636, 0.2533187331700954,
        0.2873875584246195, 0.32156794318058946, 0.35587402513815714, 0.39032029636002186,
        0.42492164977766744, 0.45969342877351715, 0.4946514802958468, 0.5298122120178267,
        0.56519265411632, 0.6008105263217581, 0.6366843109796396, 0.6728333329695212,
        0.7092778474519102, 0.7460391365610942, 0.7831396163374086, 0.8206029554016402,
        0.8584542071245348, 0.8967199573449002, 0.935428490052102, 0.9746099738874292,
        1.0142966728523577, 1.0545231852638806, 1.0953267157982172, 1.1367473864538342,
        1.1788285934942129, 1.2216174189677063, 1.265165107335604, 1.3095276201894268,
        1.3547662851652738, 1.4009485591850843, 1.4481489313717788, 1.4964499978133121,
        1.5459437493733037, 1.596733125792029, 1.6489339055840169, 1.7026770234583626,
        1.7581114377453317, 1.8154077134957767, 1.8747625484931847, 1.9364045587161332,
        2.000601771738897, 2.0676714756109984, 2.1379933780433253, 2.212027517525366,
        2.2903391620216333, 2.373634269839721, 2.462811433129822, 2.5590405215205165,
        2.6638865386312016, 2.7795142579810537, 2.9090470736096363, 3.0572461506081066,
        3.231933204266534, 3.447430271103957, 3.7349366443632643, 4.189694156733378),
    8: (
        0.008446193222756295, 0.025339383099345594, 0.042234983804242794, 0.05913460434083632,
        0.07603985639252604, 0.0929523554012122, 0.10987372165229412, 0.12680558136807535,
        0.1437495678114996, 0.16070732240217558, 0.17768049584669052, 0.19467074928525907,
        0.21167975545680925, 0.22870919988466995, 0.24576078208509358, 0.2628362168009263,
        0.27993723526282477, 0.2970655864805145, 0.3142230385666894, 0.33141138009626975,
        0.3486324215038598, 0.3658879965223876, 0.38317996366605755, 0.4005102077609124,
        0.41788064152647963, 0.43529320721217035, 0.45274987829231145, 0.47025266122391923,
        0.4878035972715734, 0.5054047644040176, 0.5230582792674087, 0.5407662992404536,
        0.5585310245770181, 0.5763547006421683, 0.5942396202480124, 0.6121881260961544,
        0.6302026133340553, 0.6482855322331184, 0.6664393909968923, 0.6846667587084027,
        0.7029702684263094, 0.7213526204403216, 0.7398165856971156, 0.7583650094088884,
        0.7770008148576407, 0.795727007409354, 0.8145466787533798, 0.8334630113836405,
        0.8524792833396407, 0.8715988732268272, 0.8908252655375329, 0.9101620562956106,
        0.9296129590499155, 0.9491818112440852, 0.968872580992572, 0.9886893742956772,
        1.0086364427294274, 1.0287181916495645, 1.048939188952738, 1.0693041744422376,
        1.0898180698503408, 1.110485989574644, 1.13131325219166, 1.1523053928175975,
        1.1734681763936767, 1.1948076119816973, 1.2163299681649922, 1.2380417896605218,
        1.2599499152598737, 1.2820614972305167, 1.3043840223240994, 1.3269253345561072,
        1.349693659941183, 1.3726976333912353, 1.3959463280095736, 1.4194492870442756,
        1.4432165587984476, 1.4672587348347692, 1.4915869918576432, 1.5162131377095,
        1.5411496619796943, 1.5664097917965718, 1.5920075534576597, 1.6179578406518962,
        1.6442764901443314, 1.6709803659313192, 1.6980874530373322, 1.7256169623186122,
        1.753589447870698, 1.7820269389149666, 1.810953088374312, 1.8403933407534958,
        1.8703751224326286, 1.900928058084589, 1.93208421766716, 1.9638783993546949,
        1.99634845490986, 2.029535665415902, 2.063485177076778, 2.09824650905685, 2.133874148222555,
        2.1704282493679052, 2.2079754643316654, 2.246589929732332, 2.2863544513987355,
        2.327361934728369, 2.36971712526939, 2.4135387444120555, 2.458962133587387,
        2.5061425604170537, 2.5552593973824385, 2.6065214664607876, 2.6601739656957775,
        2.71650757857875, 2.775870652699903, 2.8386857867574364, 2.90547290366505,
        2.976882133701405, 3.0537420161692928, 3.1371325317023246, 3.2285002105788148,
        3.329848470000476, 3.4440716782142333, 3.5755879723915944, 3.7316662622241643,
        3.9256377839361196, 4.186595442844834, 4.603535612430344),
}
