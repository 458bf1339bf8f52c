namespace FlmCluster.Training.Config;

/// <summary>Shape and parametrization of an FLM-style decoder (docs/model.md).</summary>
public sealed record ModelConfig
{
    public int Layers { get; init; }
    public int Hidden { get; init; }
    public int Heads { get; init; }

    /// <summary>FFN inner size; 0 means 4 × hidden.</summary>
    public int Ffn { get; init; }

    /// <summary>
    /// Size of one attention head; 0 means hidden / heads. Growth keeps it fixed and adds heads, so after
    /// growing heads and hidden separately the attention width (heads × head size) may differ from hidden.
    /// </summary>
    public int HeadSize { get; init; }

    /// <summary>Logical vocabulary (ordinary ids + end-of-text); 0 means "take it from the tokenizer".</summary>
    public int VocabSize { get; init; }

    /// <summary>Embedding rows are padded to a multiple of this (128 × the largest TP degree to be used).</summary>
    public int VocabPadMultiple { get; init; } = 1024;

    public int SeqLen { get; init; } = 2048;
    public double LnEps { get; init; } = 1e-5;
    public double Dropout { get; init; }
    public MupConfig Mup { get; init; } = new();
    public XposConfig Xpos { get; init; } = new();

    public int FfnSize => Ffn > 0 ? Ffn : 4 * Hidden;
    public int HeadDim => HeadSize > 0 ? HeadSize : Heads > 0 ? Hidden / Heads : 0;

    /// <summary>Width of the attention inner space: heads × head size (equals hidden unless set otherwise).</summary>
    public int AttentionWidth => Heads * HeadDim;
    public int PaddedVocab => RoundUp(VocabSize, VocabPadMultiple);

    /// <summary>μP width multiplier m = d / d_base.</summary>
    public double WidthMult => (double)Hidden / Mup.BaseWidth;

    /// <summary>Parameters of one block (a = attention width): c_attn (3a·d+3a), attn.c_proj (d·a+d), c_fc (d·f+f), mlp.c_proj (f·d+d), 2 LayerNorms (4d).</summary>
    public long BlockParameters
    {
        get
        {
            long d = Hidden, f = FfnSize, a = AttentionWidth;
            return 3 * a * d + 3 * a + d * a + d + d * f + f + f * d + d + 4 * d;
        }
    }

    /// <summary>Total parameters with the input embedding tied to the output head (as FLM-101B).</summary>
    public long ParameterCount => Layers * BlockParameters + (long)PaddedVocab * Hidden + 2L * Hidden;

    public void Validate(string where = "model")
    {
        Require(Layers > 0, $"{where}.layers must be positive (got {Layers})");
        Require(Layers <= MaxLayers, $"{where}.layers={Layers} is more than {MaxLayers}; every layer is an object of its own (modules, tensors, checkpoint records)");
        Require(Hidden > 0, $"{where}.hidden must be positive (got {Hidden})");
        Require(Heads > 0, $"{where}.heads must be positive (got {Heads})");
        Require(HeadSize >= 0, $"{where}.head_size must be positive, or 0 for hidden/heads (got {HeadSize})");
        Require(HeadSize > 0 || Hidden % Heads == 0, $"{where}.heads ({Heads}) must divide {where}.hidden ({Hidden}); pick heads so that hidden/heads is the head size");
        Require(HeadDim % 2 == 0, $"{where}: head size hidden/heads = {HeadDim} must be even for xPos rotary");
        Require(Ffn >= 0, $"{where}.ffn must be positive, or 0 for 4 × hidden (got {Ffn})");
        Require(VocabSize > 0, $"{where}.vocab_size must be positive (got {VocabSize})");
        Require(VocabPadMultiple > 0, $"{where}.vocab_pad_multiple must be positive (got {VocabPadMultiple})");
        Require(SeqLen > 0, $"{where}.seq_len must be positive (got {SeqLen})");
        // Derived sizes are ints and parameter counts 64-bit: absurd shapes are refused before any product overflows.
        Require(Ffn > 0 || Hidden <= int.MaxValue / 4, $"{where}.hidden={Hidden} is too large for an FFN of 4 × hidden; give a smaller hidden");
        Require((long)Heads * HeadDim <= int.MaxValue, $"{where}: heads × head size = {Heads} × {HeadDim} is too large; give fewer heads or a smaller head_size");
        Require((long)VocabSize + VocabPadMultiple - 1 <= int.MaxValue, $"{where}.vocab_size={VocabSize} padded to a multiple of {VocabPadMultiple} is too large");
        Require(EstimatedParameters <= MaxParameters,
            $"{where}: {Layers} layers × hidden {Hidden} (FFN {FfnSize}, vocabulary {PaddedVocab}) is about {EstimatedParameters:0.#e0} parameters, more than the {MaxParameters:0.#e0} this tool can plan; give a smaller model");
        Require(double.IsFinite(LnEps) && LnEps > 0, $"{where}.ln_eps must be positive and finite (got {LnEps})");
        Require(Dropout is >= 0 and < 1, $"{where}.dropout must be in [0, 1) (got {Dropout})");
        Mup.Validate($"{where}.mup");
        Xpos.Validate($"{where}.xpos");
    }

    /// <summary>The deepest model this tool builds (FLM-101B has 80 layers).</summary>
    public const int MaxLayers = 1 << 14;

    /// <summary>The largest model whose byte counts (parameters × bytes of weights, gradients and optimizer state) stay far inside 64 bits.</summary>
    public const double MaxParameters = 1e15;

    /// <summary>The parameter count in floating point, which cannot overflow whatever the shape.</summary>
    private double EstimatedParameters
    {
        get
        {
            double d = Hidden, f = FfnSize, a = AttentionWidth;
            return Layers * (4 * a * d + 3 * a + 2 * d * f + f + 6 * d) + (double)PaddedVocab * d + 2 * d;
        }
    }

    internal static int RoundUp(int value, int multiple) => multiple <= 0 ? value : (value + multiple - 1) / multiple * multiple;

    internal static void Require(bool condition, string message)
    {
        if (!condition)
            throw new FlmUserException(message);
    }
}

/// <summary>μP (maximal update) parametrization as the FLM team implemented it (docs/model.md, μP).</summary>
public sealed record MupConfig
{
    /// <summary>Width at which μP multipliers are 1; FLM-101B uses 256.</summary>
    public int BaseWidth { get; init; } = 256;

    /// <summary>Logits are multiplied by output_mult / m (FLM-101B: 2.0 / 40).</summary>
    public double OutputMult { get; init; } = 1.0;

    /// <summary>Embeddings are multiplied by input_mult (FLM-101B: 1.0).</summary>
    public double InputMult { get; init; } = 1.0;

    /// <summary>σ of the base-width initialisation.</summary>
    public double InitStd { get; init; } = 0.02;

    /// <summary>Initialise the query third of c_attn to zero (μP option).</summary>
    public bool QueryZeroInit { get; init; }

    public void Validate(string where)
    {
        ModelConfig.Require(BaseWidth > 0, $"{where}.base_width must be positive (got {BaseWidth})");
        ModelConfig.Require(double.IsFinite(OutputMult) && OutputMult > 0, $"{where}.output_mult must be positive and finite (got {OutputMult})");
        ModelConfig.Require(double.IsFinite(InputMult) && InputMult > 0, $"{where}.input_mult must be positive and finite (got {InputMult})");
        ModelConfig.Require(double.IsFinite(InitStd) && InitStd > 0, $"{where}.init_std must be positive and finite (got {InitStd})");
    }
}

/// <summary>xPos rotary embedding constants (docs/model.md, xPos).</summary>
public sealed record XposConfig
{
    public double ScaleBase { get; init; } = 512;
    public double Theta { get; init; } = 10000;
    public double Gamma { get; init; } = 0.4;

    public void Validate(string where)
    {
        ModelConfig.Require(double.IsFinite(ScaleBase) && ScaleBase > 0, $"{where}.scale_base must be positive and finite (got {ScaleBase})");
        ModelConfig.Require(double.IsFinite(Theta) && Theta > 1, $"{where}.theta must be finite and greater than 1 (got {Theta})");
        ModelConfig.Require(double.IsFinite(Gamma) && Gamma > 0, $"{where}.gamma must be positive and finite (got {Gamma})");
    }
}
