"""Online experiments: which variant a user gets (`design`), every list served recorded off the response path
(`impressions`), exploration with logged propensities (`exploration`), per-variant results with their tests
(`results`) and the post-publish guard (`guard`). May import recommend, store, core; never serving or api."""
