-- PostgreSQL's 0007 adds a function for starts that skip reading a definition's
-- newest version; SQLite answers that read at once and needs nothing (the
-- migration keeps both dialects' versions alike).
SELECT 1;
