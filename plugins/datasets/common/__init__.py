"""What the NSynth and GMNotes dataset plugins share: NSynth's label space (:mod:`.families`) and
the reader of NSynth's on-disk layout (:mod:`.layout`), which both plugins write."""
