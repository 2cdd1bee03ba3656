"""A build, pure: credentials merged, platforms planned, objects rendered, pod outcomes read, the next step
decided and the status made. Imports spec only: never a client, never the clock."""
