"""Pure nouns every capability uses: machines, classifications, assessment and install outcomes. No SDK."""
