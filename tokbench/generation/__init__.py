"""Generation in the loop: Janus / Janus-Pro text-to-image (`generate`), and scoring of any generator's
images (`evaluate`: CLIP-score, FID, diversity, re-tokenisation consistency), with a built-in prompt set."""
