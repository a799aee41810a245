from django.conf import settings
from django.contrib.auth import views as auth_views
from django.urls import include, path, reverse_lazy

from .views import accounts, notebooks, notices, project, terminal

app_name = "console"

account_urls = [
    path(
        "login/",
        auth_views.LoginView.as_view(
            template_name="console/login.html",
            redirect_authenticated_user=True,
            extra_context={"sso_name": settings.NBCLOUD_OIDC_NAME if settings.OIDC_ENABLED else ""},
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "password/",
        auth_views.PasswordChangeView.as_view(
            template_name="console/password_change.html",
            success_url=reverse_lazy("console:password_changed"),
        ),
        name="password_change",
    ),
    path(
        "password/done/",
        auth_views.PasswordChangeDoneView.as_view(template_name="console/password_changed.html"),
        name="password_changed",
    ),
    path("invitation/<str:code>/", accounts.accept_invitation, name="invitation"),
]
if settings.OIDC_ENABLED:
    # Single sign-on (nbcloud.console.oidc): authenticate/, callback/ and logout/.
    account_urls.append(path("oidc/", include("mozilla_django_oidc.urls")))

nb = "notebooks/<str:notebook_id>"
project_urls = [
    path("", notebooks.notebook_list, name="notebooks"),
    path("notebooks/rows/", notebooks.notebook_rows, name="notebook_rows"),
    path("notebooks/new/", notebooks.notebook_new, name="notebook_new"),
    path("notebooks/new/price/", notebooks.notebook_price, name="notebook_price"),
    path("notebooks/new/row/", notebooks.volume_row, name="volume_row"),
    path(f"{nb}/", notebooks.notebook_detail, name="notebook"),
    path(f"{nb}/status/", notebooks.notebook_status, name="notebook_status"),
    path(f"{nb}/logs/", notebooks.notebook_logs, name="notebook_logs"),
    path(f"{nb}/command/", terminal.notebook_command, name="notebook_command"),
    path(f"{nb}/metrics/", notebooks.notebook_metrics, name="notebook_metrics"),
    path(f"{nb}/start/", notebooks.notebook_start, name="notebook_start"),
    path(f"{nb}/stop/", notebooks.notebook_stop, name="notebook_stop"),
    path(f"{nb}/delete/", notebooks.notebook_delete, name="notebook_delete"),
    path(f"{nb}/share/", notebooks.notebook_share, name="notebook_share"),
    path(f"{nb}/backups/<str:backup_id>/fork/", notebooks.notebook_fork, name="notebook_fork"),
    path("usage/", project.usage, name="usage"),
    path("usage.csv", project.usage_csv, name="usage_csv"),
    path("quota/", project.quota, name="quota"),
    path("tokens/", project.tokens, name="tokens"),
    path("tokens/<int:token_id>/renew/", project.token_renew, name="token_renew"),
    path("tokens/<int:token_id>/delete/", project.token_delete, name="token_delete"),
    path("datastores/", project.datastores, name="datastores"),
    path("datastores/<str:alias>/delete/", project.datastore_delete, name="datastore_delete"),
    path("notices/", notices.notices, name="notices"),
    path("notices/log/", notices.notice_deliveries, name="notice_deliveries"),
    path("notices/<int:target_id>/test/", notices.notice_test, name="notice_test"),
    path("notices/<int:target_id>/toggle/", notices.notice_toggle, name="notice_toggle"),
    path("notices/<int:target_id>/secret/", notices.notice_rotate, name="notice_rotate"),
    path("notices/<int:target_id>/delete/", notices.notice_delete, name="notice_delete"),
    path("members/", project.members, name="members"),
    path("members/<int:user_id>/", project.member_change, name="member_change"),
    path(
        "invitations/<int:invitation_id>/delete/",
        project.invitation_delete,
        name="invitation_delete",
    ),
]

urlpatterns = [
    path("accounts/", include(account_urls)),
    path("", accounts.home, name="home"),
    path("switch/", accounts.switch_project, name="switch"),
    path("projects/<str:project>/", include(project_urls)),
]
