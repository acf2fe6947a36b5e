from sora2.cli import main

raise SystemExit(main())
