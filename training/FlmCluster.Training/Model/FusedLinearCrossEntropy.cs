using FlmCluster.Training.Parallel;
using TorchSharp;
using static TorchSharp.torch;

namespace FlmCluster.Training.Model;

/// <summary>
/// Σ cross-entropy of next-token targets for logits = (h · Wᵀ) · scale over a vocabulary split across
/// tensor-parallel ranks, computed token-chunk by token-chunk so that no [tokens × vocab] tensor ever
/// exists. The forward pass also computes the gradients for h and W (softmax − one-hot, chunk by chunk)
/// and saves them; backward scales them by the incoming scalar gradient. With cl100k's 100,352 rows this
/// bounds the loss's memory by the chunk and avoids re-faulting hundreds of MB per step.
/// </summary>
public sealed class FusedLinearCrossEntropy : autograd.SingleTensorFunction<FusedLinearCrossEntropy>
{
    /// <summary>Elements of one chunk's logits (16 MiB in fp32).</summary>
    public const long ChunkElements = 4L << 20;

    public override string Name => "FusedLinearCrossEntropy";

    /// <summary>Sum of per-token losses. <paramref name="hidden"/> is [N, d] (already inside the TP region), <paramref name="weight"/> [V/tp, d].</summary>
    public static Tensor LossSum(Tensor hidden, Tensor weight, Tensor targets, double scale, TensorParallelContext tp, long vocabStart, long chunkElements = ChunkElements) =>
        apply(hidden, weight, targets, scale, tp, vocabStart, chunkElements);

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var hidden = (Tensor)vars[0];
        var weight = (Tensor)vars[1];
        var targets = (Tensor)vars[2];
        var scale = (double)vars[3];
        var tp = (TensorParallelContext)vars[4];
        var vocabStart = (long)vars[5];
        var chunkElements = (long)vars[6];
        var needGrad = hidden.requires_grad || weight.requires_grad;

        using var _ = no_grad();
        var tokens = hidden.shape[0];
        var localVocab = weight.shape[0];
        var chunk = Math.Max(1, Math.Min(tokens, chunkElements / localVocab));
        var computeType = hidden.dtype == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
        var gradHidden = needGrad ? zeros_like(hidden, dtype: computeType) : null;
        var gradWeight = needGrad ? zeros_like(weight, dtype: computeType) : null;
        var total = zeros(1, dtype: ScalarType.Float64, device: hidden.device);
        var w = weight.to(computeType);
        for (long start = 0; start < tokens; start += chunk)
        {
            using var scope = NewDisposeScope();
            var n = Math.Min(chunk, tokens - start);
            var h = hidden.narrow(0, start, n).to(computeType);
            var t = targets.narrow(0, start, n);
            var logits = mm(h, w.t()).mul_(scale);                                   // [n, V/tp]
            var max = logits.amax([-1], keepdim: true).contiguous();
            tp.AllReduceNoGrad(max, ReduceOp.Max);
            logits.sub_(max);
            var outside = t.lt(vocabStart).logical_or(t.ge(vocabStart + localVocab));
            var local = (t - vocabStart).masked_fill(outside, 0).unsqueeze(-1);
            var targetLogit = logits.gather(-1, local).squeeze(-1).masked_fill(outside, 0).contiguous();
            tp.AllReduceNoGrad(targetLogit, ReduceOp.Sum);
            var probs = logits.exp_();                                                // reuse the buffer
            var sumExp = probs.sum(-1).contiguous();
            tp.AllReduceNoGrad(sumExp, ReduceOp.Sum);
            total.add_((sumExp.log() - targetLogit).sum().to(ScalarType.Float64));
            if (!needGrad)
                continue;
            // d loss / d logits = softmax − one-hot (the one-hot only on the rank that owns the target).
            probs.div_(sumExp.unsqueeze(-1));
            var ownedRows = outside.logical_not().nonzero().squeeze(-1);
            if (ownedRows.shape[0] > 0)
            {
                var cols = local.squeeze(-1).index_select(0, ownedRows);
                probs.index_put_(probs.index([ownedRows, cols]) - 1.0, ownedRows, cols);
            }
            gradHidden!.narrow(0, start, n).copy_(mm(probs, w).mul_(scale));
            gradWeight!.addmm_(probs.t(), h * scale);
        }
        if (needGrad)
            ctx.save_for_backward([gradHidden!.to(hidden.dtype), gradWeight!.to(weight.dtype)]);
        return total.to(computeType).squeeze();
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad)
    {
        var saved = ctx.get_saved_variables();
        return [saved[0] * grad, saved[1] * grad, null!, null!, null!, null!, null!];
    }
}
