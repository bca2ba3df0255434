"""Core: what every stage uses and that knows no stage.

Owns: the user-facing error (`errors`), atomic file writes and hashing (`fileio`), versioned JSON documents
(`jsonio`), seed-derived latents (`latents`), pixels and image files (`images`), the one clock (`timing`),
shipped assets (`resources`), devices (`device`), what `progress` means (`progress`), where a command may write
(`outputs`), the user's cache folder (`usercache`) and the machine: CPU features, cores and available memory
(`hardware`).
May import: nothing from gan_deploy (the standard library, numpy; torch only inside functions).
"""
