"""Migration into the archive: from a remote PACS over query/retrieve, with a journal that
makes it resumable and a verification of every study against its source; and out of it, into
another archive (``archive_copy``)."""
