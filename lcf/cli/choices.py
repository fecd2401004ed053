"""Choice lists shared by the parser and the commands (here so that `lcf --help` needs no torch import)."""

#: `lcf eval --systems` choices
SYSTEM_CHOICES = ("receiver", "sharer", "text", "lora", "lora_alone", "adapter", "zero", "mismatched")
DEFAULT_SYSTEMS = SYSTEM_CHOICES
#: `lcf eval --format` choices (multiple-choice scoring; lcf.eval.scoring.MC_FORMATS, checked by a test)
MC_FORMAT_CHOICES = ("lmeval", "chat", "letter", "generate-letter")
#: `lcf eval-xc --systems` choices
XC_SYSTEM_CHOICES = ("receiver", "own", "full", "full-short", "text", "lcf-x", "int8", "int4", "zero", "mean",
                     "mismatched")
